"""A newcomer's change: a new advantage estimator, in this one file.

RLOO's leave-one-out baseline (Ahmadian et al., arXiv 2402.14740): ``A_i = r_i - mean of the
other G - 1 rewards of the group = G / (G - 1) * (r_i - mean_g)``. The file defines it,
registers it (in a test-local scope: gone after the test, from the trainer's registry and from
the contract's catalog), names it in a spec, and runs two steps of the product's own loop
(``train`` with the in-process rollout backend). No other file knows about it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from agpo_api import parse_job
from agpo_api.catalog import EstimatorTraits
from agpo_trainer.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AdvantageOptions,
    register_advantage_estimator,
)
from agpo_trainer.rollout.inprocess import InProcessBackend
from agpo_trainer.runtime import Runtime
from agpo_trainer.train import Recording, train

from agpo_testlib import job_doc

CALLS: list[tuple[Tensor, Tensor]] = []  # (grouped rewards, advantages) of every call


def leave_one_out(grouped: Tensor, homogeneous: Tensor, options: AdvantageOptions) -> Tensor:
    """RLOO: ``G / (G - 1) * (r_i - mean_g)``; 0 on homogeneous groups (the zero-variance
    policy decides those). Shapes ``[num_groups, G]``."""
    g = grouped.shape[-1]
    adv = g / (g - 1) * (grouped - grouped.mean(dim=-1, keepdim=True))
    adv = adv.masked_fill(homogeneous.unsqueeze(-1), 0.0)
    CALLS.append((grouped.clone(), adv.clone()))
    return adv


@pytest.fixture
def rloo() -> Iterator[None]:
    CALLS.clear()
    with ADVANTAGE_ESTIMATORS.scope():
        register_advantage_estimator("rloo", traits=EstimatorTraits())(leave_one_out)
        yield


def job() -> dict[str, Any]:
    return job_doc(
        {
            "spec.model.dtype": "float32",
            "spec.dataset": {"source": {"builtin": {"task": "arithmetic", "size": 64}}},
            "spec.algorithm": {"advantage": "rloo", "zeroVariance": "keep", "groupSize": 4},
            "spec.training": {"steps": 2, "promptsPerStep": 2, "maxCompletionTokens": 4,
                              "learningRate": 1e-3, "maxPromptTokens": 16},
            "spec.rollout": {"maxModelLen": 64},
        }
    )  # fmt: skip


@pytest.mark.slow
def test_a_registered_estimator_trains_two_steps_in_the_products_loop(
    rloo: None, tmp_path: Path
) -> None:
    seen = Recording()
    train(
        parse_job(job()),
        Runtime.single(tmp_path, tmp_path / "cache"),
        backend=InProcessBackend.of,
        callbacks=seen,
    )
    assert [s.step for s in seen.steps] == [1, 2]
    assert len(CALLS) == 2  # one call per step's batch
    for batch, (_, adv) in zip(seen.batches, CALLS, strict=True):
        # the batch trains on exactly the estimator's advantages (zeroVariance keep adds none)
        assert batch.advantages == pytest.approx(adv.reshape(-1).tolist())
        assert torch.allclose(adv.sum(dim=-1), torch.zeros(adv.shape[0]), atol=1e-6)


def test_the_spec_knows_the_name_only_while_it_is_registered(rloo: None) -> None:
    assert parse_job(job()).spec.algorithm.advantage == "rloo"


def test_an_unregistered_name_is_refused_naming_the_field() -> None:
    with pytest.raises(
        ValueError,
        match=r"advantage: input should be .grpo., .dr_grpo. or .reinforce. \(a registered advantage estimator\), got .rloo.",
    ):
        parse_job(job())
