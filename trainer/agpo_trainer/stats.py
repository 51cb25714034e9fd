"""Typed statistics of one training step and of an evaluation, read out through the metrics
table (:mod:`agpo_api.metrics_table`): a table row names the field that carries its figure
here, and the ``step {...}`` log line, ``/status`` (:class:`agpo_api.progress.TrainerProgress`)
and the Prometheus series (:mod:`agpo_trainer.metrics`) are all derived from the rows, so a
new figure is a field here and a row there. Pure: no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from agpo_api.metrics_table import Metric, reduction, rows
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
    reward_component_mean: dict[str, float] = field(default_factory=dict)  # by reward term
    # The correct completions' lengths (None: none was correct) and the groups whose
    # completions were all correct or all wrong (the two kinds of zero-variance group).
    correct_completion_tokens_mean: float | None = None
    correct_reasoning_tokens_mean: float | None = None
    all_correct_fraction: float = 0.0
    all_wrong_fraction: float = 0.0


@dataclass(frozen=True)
class UpdateStats:
    """The policy update of a step, over the whole (all-rank) batch: every ``update`` row of
    the metrics table (None: the loss did not report it, e.g. GVPO's figure under another
    loss, or no token was included)."""

    loss: float
    policy_loss: float
    kl: float
    entropy: float
    clip_ratio_low: float
    clip_ratio_high: float
    ratio_mean: float
    grad_norm: float  # before clipping
    learning_rate: float
    ratio_min: float | None = None
    ratio_max: float | None = None
    gvpo_mse: float | None = None
    # algorithm.rolloutCorrection on: the engine-trainer gap and the weights it gave
    rollout_trainer_kl: float | None = None
    is_weight_mean: float | None = None
    is_masked_ratio: float | None = None

    @property
    def clip_ratio(self) -> float:
        """Tokens whose ratio was clipped, below or above (disjoint: opposite signs of A)."""
        return self.clip_ratio_low + self.clip_ratio_high

    @staticmethod
    def from_loss_metrics(
        combined: Mapping[str, float], *, grad_norm: float, learning_rate: float
    ) -> UpdateStats:
        """From ``compute_policy_loss``'s metrics, combined over micro-batches, ranks and
        optimizer steps; one the loss did not report reads as its row's ``absent`` value, and
        an infinite extreme (no included token anywhere) as None."""
        own = {f.name for f in fields(UpdateStats)}
        values: dict[str, Any] = {}
        for m in rows("update"):
            if m.field not in own:
                continue
            value = combined.get(m.field)
            values[m.field] = m.absent if value is None or not math.isfinite(value) else value
        values |= {"grad_norm": grad_norm, "learning_rate": learning_rate}
        return UpdateStats(**values)


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
    # The rollout pool after the step's push (an in-process backend reports none).
    rollout_servers: int | None = None
    serving_servers: int | None = None
    lagging_servers: list[str] | None = None  # /status only: the operator's condition names them

    def value(self, metric: Metric) -> Any:
        """The figure of a ``step``, ``rollout`` or ``update`` row of the metrics table."""
        holder = {"step": self, "rollout": self.rollout, "update": self.update}[metric.source]
        return getattr(holder, metric.field)

    def progress(self) -> TrainerProgress:
        """The ``/status`` fields of this step: the table's status rows, then the prompts."""
        values = {m.field: self.value(m) for m in rows("step", "rollout", "update", status=True)}
        return TrainerProgress(**values, lagging_servers=self.lagging_servers, prompts=self.prompts)

    def log_line(self) -> str:
        """``step {...}``: the progress as one JSON object ("prompts" last: it is long)."""
        return "step " + json.dumps(self.progress().to_wire())

    def record(self) -> dict[str, Any]:
        """The ``step`` record (:mod:`agpo_api.records`): every row's figure by its wire
        name, the status rows and the others, then the prompts."""
        figures = {m.wire: self.value(m) for m in rows("step", "rollout", "update")}
        return {**figures, "prompts": self.prompts}


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

    def value(self, metric: Metric) -> Any:
        """The figure of an ``eval`` row of the metrics table (``eval_x`` is the field ``x``)."""
        return getattr(self, metric.field.removeprefix("eval_"))

    def progress(self) -> TrainerProgress:
        """The ``/status`` fields of this evaluation (kept until the next one)."""
        return TrainerProgress(**{m.field: self.value(m) for m in rows("eval", status=True)})

    def log_line(self) -> str:
        """``eval {...}``: every field, camelCase (a line apart from the ``step`` lines)."""
        wire = {
            "step": self.step, "policyVersion": self.policy_version, "prompts": self.prompts,
            "accuracy": self.accuracy, "samples": self.samples, "meanAtK": self.mean_at_k,
            "passAtK": self.pass_at_k, "reasoningTokens": self.reasoning_tokens,
            "seconds": round(self.seconds, 3),
        }  # fmt: skip
        return "eval " + json.dumps(wire)

    def record(self) -> dict[str, Any]:
        """The ``eval`` record (:mod:`agpo_api.records`): every ``eval`` row's figure by its
        wire name, and what the figures are of."""
        figures = {m.wire: self.value(m) for m in rows("eval")}
        return {
            "step": self.step, "policyVersion": self.policy_version, "prompts": self.prompts,
            "samples": self.samples, **figures,
        }  # fmt: skip


def combine_steps(metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Several optimizer steps' metrics as one, each as the metrics table says: the mean of a
    ``mean`` figure over the steps that report it, the min or max of an extreme."""
    out: dict[str, float] = {}
    counts: dict[str, int] = {}
    for m in metrics:
        for key, value in m.items():
            how = reduction(key)
            if key not in out:
                out[key], counts[key] = value, 1
            elif how == "mean":
                out[key], counts[key] = out[key] + value, counts[key] + 1
            else:
                out[key] = min(out[key], value) if how == "min" else max(out[key], value)
    return {k: v / counts[k] if reduction(k) == "mean" else v for k, v in out.items()}


def algorithm_line(algorithm: Mapping[str, Any]) -> str:
    """``algorithm {...}``: the resolved ``spec.algorithm`` (preset expanded) as one JSON
    object, the trainer's first log line."""
    return "algorithm " + json.dumps(dict(algorithm))
