"""Typed statistics of one training step, with one set of names from the loop to the outside.

A field here has the same (snake_case) name as the :class:`agpo_api.progress.TrainerProgress`
field that carries it on ``/status`` and in the ``step {...}`` log line (camelCase on the
wire, e.g. ``reward_mean`` -> ``rewardMean``) and as the :class:`agpo_trainer.metrics.
TrainerMetrics` attribute of its Prometheus series (``agpo_reward_mean``). Pure: no torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agpo_api.progress import TrainerProgress


@dataclass(frozen=True)
class RolloutStats:
    """What rank 0 measured while generating and scoring a step's batch."""

    reward_mean: float
    reward_std: float
    accuracy: float
    zero_variance_fraction: float  # groups whose rewards are all equal
    completion_tokens_mean: float
    completion_clipped_ratio: float  # completions cut at maxCompletionTokens
    rollout_tokens: float
    resample_rounds: float
    rollout_seconds: float
    reward_seconds: float
    reward_components: dict[str, float] = field(default_factory=dict)  # mean of each term


@dataclass(frozen=True)
class UpdateStats:
    """The policy update of a step, over the whole (all-rank) batch."""

    loss: float
    ratio_mean: float
    kl: float
    entropy: float
    clip_ratio: float  # tokens whose ratio was clipped, below or above
    grad_norm: float  # before clipping
    learning_rate: float

    @staticmethod
    def from_loss_metrics(
        summed: Mapping[str, float], *, grad_norm: float, learning_rate: float
    ) -> UpdateStats:
        """From ``compute_policy_loss``'s metrics, summed with each micro-batch's share (absent
        ones, e.g. ``kl`` without a reference model, read as their neutral value)."""
        return UpdateStats(
            loss=summed.get("loss", 0.0),
            ratio_mean=summed.get("ratio/mean", 1.0),
            kl=summed.get("kl", 0.0),
            entropy=summed.get("entropy", 0.0),
            clip_ratio=summed.get("clip_ratio/low_mean", 0.0)
            + summed.get("clip_ratio/high_mean", 0.0),
            grad_norm=grad_norm,
            learning_rate=learning_rate,
        )


@dataclass(frozen=True)
class StepStats:
    """One finished step, as rank 0 reports it."""

    step: int
    total_steps: int
    policy_version: int
    rollout: RolloutStats
    update: UpdateStats
    step_seconds: float
    train_seconds: float
    weight_sync_seconds: float
    prompts: list[int]  # dataset indices of the step's prompts, in order
    # The weight version the servers served while generating the batch, and how many
    # versions older that is than the policy the batch trained (training.maxStaleness).
    rollout_policy_version: int | None = None
    batch_staleness: int | None = None

    def progress(self) -> TrainerProgress:
        """The ``/status`` fields of this step."""
        r, u = self.rollout, self.update
        return TrainerProgress(
            step=self.step,
            total_steps=self.total_steps,
            policy_version=self.policy_version,
            reward_mean=r.reward_mean,
            accuracy=r.accuracy,
            completion_tokens_mean=r.completion_tokens_mean,
            zero_variance_fraction=r.zero_variance_fraction,
            resample_rounds=r.resample_rounds,
            loss=u.loss,
            ratio_mean=u.ratio_mean,
            kl=u.kl,
            clip_ratio=u.clip_ratio,
            grad_norm=u.grad_norm,
            step_seconds=self.step_seconds,
            rollout_seconds=r.rollout_seconds,
            reward_seconds=r.reward_seconds,
            train_seconds=self.train_seconds,
            weight_sync_seconds=self.weight_sync_seconds,
            rollout_policy_version=self.rollout_policy_version,
            batch_staleness=self.batch_staleness,
            prompts=self.prompts,
        )

    def log_line(self) -> str:
        """``step {...}``: the progress as one JSON object ("prompts" last: it is long)."""
        return "step " + json.dumps(self.progress().to_wire())


@dataclass(frozen=True)
class EvalStats:
    """One evaluation (``spec.evaluation``) of the policy the servers serve at ``step``."""

    step: int
    policy_version: int
    prompts: int
    accuracy: float  # greedy
    samples: int  # k; 0 = greedy only
    mean_at_k: float | None  # mean correctness of the k samples
    pass_at_k: float | None  # prompts with at least one correct sample
    reasoning_tokens: float | None  # mean tokens before the answer marker, correct greedy ones
    seconds: float

    def progress(self) -> TrainerProgress:
        """The ``/status`` fields of this evaluation (kept until the next one)."""
        return TrainerProgress(
            eval_step=self.step,
            eval_accuracy=self.accuracy,
            eval_mean_at_k=self.mean_at_k,
            eval_pass_at_k=self.pass_at_k,
            eval_reasoning_tokens=self.reasoning_tokens,
        )

    def log_line(self) -> str:
        """``eval {...}``: every field, camelCase (a line apart from the ``step`` lines)."""
        wire = {
            "step": self.step, "policyVersion": self.policy_version, "prompts": self.prompts,
            "accuracy": self.accuracy, "samples": self.samples, "meanAtK": self.mean_at_k,
            "passAtK": self.pass_at_k, "reasoningTokens": self.reasoning_tokens,
            "seconds": round(self.seconds, 3),
        }  # fmt: skip
        return "eval " + json.dumps(wire)


def mean_of(metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over several optimizer steps (a metric missing from a step,
    e.g. ``kl`` without a reference model, is averaged over the steps that have it)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for m in metrics:
        for key, value in m.items():
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] for key in sums}


def algorithm_line(algorithm: Mapping[str, Any]) -> str:
    """``algorithm {...}``: the resolved ``spec.algorithm`` (preset expanded) as one JSON
    object, the trainer's first log line."""
    return "algorithm " + json.dumps(dict(algorithm))
