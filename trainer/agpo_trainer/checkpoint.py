"""Checkpoints: Hugging Face weights + tokenizer, optimizer, scheduler, RNG, data cursor.

Each checkpoint is a directory ``step-000010`` written under a temporary name and renamed
into place, so a reader sees complete checkpoints only; a killed trainer loses at most the
steps since the newest one. The newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from agpo_trainer.distributed import barrier

if TYPE_CHECKING:
    from agpo_trainer.data import PromptSampler
    from agpo_trainer.policy import Policy

log = logging.getLogger("agpo_trainer")

_NAME = re.compile(r"^step-(\d{6,})$")
STATE_FILE = "trainer_state.pt"
META_FILE = "checkpoint.json"


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint is, readable without torch (``checkpoint.json``)."""

    step: int
    policy_version: int
    job: str


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temp dirs are ignored)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found) if (p / META_FILE).is_file()]


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was written after (its ``checkpoint.json``, no torch needed)."""
    return int(json.loads((path / META_FILE).read_text())["step"])


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    root: Path,
    *,
    meta: CheckpointMeta,
    model: Any,
    tokenizer: Any,
    weights: dict[str, Any] | None = None,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write a checkpoint atomically (temp dir + rename) and prune to the newest ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(meta.step)
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # ``weights``: a full state dict gathered from a sharded (FSDP) model.
    model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(json.dumps(asdict(meta)))
    if final.exists():  # a re-run of the same step after a crash: replace it
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(path: Path) -> tuple[CheckpointMeta, dict[str, Any]]:
    """The metadata and the trainer state (optimizer, scheduler, RNG, cursor) of a checkpoint."""
    meta = CheckpointMeta(**json.loads((path / META_FILE).read_text()))
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    return meta, state


# --------------------------------------------------------------------------- the trainer's state
def save_training_state(
    policy: Policy,
    sampler: PromptSampler,
    meta: CheckpointMeta,
    root: Path,
    keep: int,
    *,
    cursor: dict[str, int] | None = None,
) -> None:
    """Checkpoint everything a resume needs. Every rank calls it (FSDP gathers collectively);
    rank 0 writes. ``cursor``, when given, is saved instead of the sampler's own state: with
    overlapped rollouts the sampler has already drawn a batch that is not trained yet, and a
    resume must draw it again (``RolloutPipeline.cursor``)."""
    full = policy.gather_weights()
    optimizer = policy.optimizer_state()
    if policy.rt.is_main:
        state = {
            "optimizer": optimizer,
            "scheduler": policy.scheduler.state_dict(),
            "sampler": sampler.state_dict() if cursor is None else cursor,
            "rng": rng_state(),
        }
        path = save_checkpoint(
            root,
            meta=meta,
            model=policy.module,
            weights=full,
            tokenizer=policy.tokenizer,
            state=state,
            keep=keep,
        )
        log.info("checkpoint %s", path)
    barrier()


def resume_training_state(
    policy: Policy, sampler: PromptSampler, root: Path
) -> CheckpointMeta | None:
    """Load the newest checkpoint under ``root`` into ``policy`` and ``sampler`` (and the RNGs);
    its metadata (step, policy version), or None when there is none."""
    ckpt = latest_checkpoint(root)
    if ckpt is None:
        return None
    from safetensors.torch import load_file

    meta, state = load_state(ckpt)
    weights = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    policy.load_full_state(weights, state["optimizer"])
    policy.scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    log.info("resumed from %s at step %d (policy version %d)", ckpt, meta.step, meta.policy_version)
    return meta
