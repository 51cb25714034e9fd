"""What ``agpo run`` checks before minutes of server start-up, and how it says what is wrong.

Every check ends in one :class:`LaunchError` line naming the field, file, row or function and
how to fix it; nothing has been started yet when one is raised.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from agpo_api.env import EnvVar
from agpo_api.models import AGPOJob


class LaunchError(RuntimeError):
    """Something the launcher checked or started failed; the message says what and where."""


def default_cache_dir() -> Path:
    """Where ``builtin:`` models (and the format warm-up) are built: ``AGPO_CACHE_DIR``, else
    ``~/.cache/agpo``."""
    return Path(os.environ.get(EnvVar.CACHE_DIR, Path.home() / ".cache" / "agpo"))


def export_cache_dir() -> Path:
    """:func:`default_cache_dir`, also set in this process's environment: the servers and the
    trainer inherit it, so they find the model that :func:`preflight` built."""
    cache = default_cache_dir()
    os.environ[EnvVar.CACHE_DIR] = str(cache)
    return cache


def _no_pvcs(job: AGPOJob) -> None:
    spec = job.spec
    pvcs = [
        (where, claim)
        for where, claim in (
            ("spec.model.source.pvc", spec.model.source and spec.model.source.pvc),
            (
                "spec.dataset.source.file.pvc",
                spec.dataset.source.file and spec.dataset.source.file.pvc,
            ),
            ("spec.training.checkpoint.pvc", spec.training.checkpoint.pvc),
        )
        if claim
    ]
    if pvcs:
        where, claim = pvcs[0]
        raise LaunchError(
            f"{where}: agpo run cannot mount PersistentVolumeClaim {claim!r} on this machine; "
            "use a local path instead (e.g. source.path / file.path) or run it in a cluster"
        )


def preflight(job: AGPOJob, base_dir: Path, cache_dir: Path | None = None) -> str:
    """Check what can be checked before minutes of server start-up: the dataset and its
    template, the model (a directory that exists, a hub id that can be fetched), the
    tokenizer and that some prompt fits ``maxPromptTokens``, the reward functions. Returns
    the model's location; raises :class:`LaunchError` with one line naming the problem."""
    from agpo_trainer.data import DataError, check_prompts_fit, load_examples
    from agpo_trainer.models.location import (
        ModelError,
        check_model,
        load_tokenizer,
        model_location,
    )
    from agpo_trainer.prompts import PromptEncoder, PromptError
    from agpo_trainer.rewards.base import RewardFunctionError
    from agpo_trainer.rewards.scoring import get_reward_function

    _no_pvcs(job)
    spec = job.spec
    # Custom reward modules may sit next to the job file (the trainer gets it on PYTHONPATH).
    sys.path.insert(0, str(base_dir))
    cache = cache_dir or default_cache_dir()
    try:
        examples = load_examples(spec.dataset, base_dir)
        for reward in spec.algorithm.rewards:
            get_reward_function(reward.name or reward.function or "")
        location = model_location(spec.model, cache)
        check_model(spec.model, location)
        tokenizer = load_tokenizer(spec.model, location)
        encode = PromptEncoder(tokenizer, spec.dataset)
        check_prompts_fit(examples, encode, spec.training.max_prompt_tokens)
    except (DataError, RewardFunctionError, ModelError, PromptError) as err:
        raise LaunchError(str(err)) from None
    return location
