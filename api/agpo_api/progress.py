"""The trainer's progress report: what rank 0 serves as JSON at ``/status``.

One schema for its three readers: the operator copies part of it into the CR status
(:data:`CR_STATUS_FIELDS`), ``agpo run`` shows it in the progress bar, tests read it. The
trainer writes it from the status rows of the metrics table (:mod:`agpo_api.metrics_table`);
the wire names are camelCase, like the CR. The typed fields are the ones the readers use (a
test checks each is a row of the table); a row added to the table is served too, as an extra
field, without a change here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel


class TrainerProgress(BaseModel):
    """Rank 0's latest state; every field is optional (a trainer that has not finished a step
    serves only ``phase``, ``step`` and ``totalSteps``)."""

    # extra="allow": the table's status rows that readers do not need typed pass through.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    phase: str | None = None  # Initializing | Running | Succeeded
    step: int | None = None
    total_steps: int | None = None
    policy_version: int | None = None
    reward_mean: float | None = None
    accuracy: float | None = None
    completion_tokens_mean: float | None = None
    zero_variance_fraction: float | None = None
    correct_completion_tokens_mean: float | None = None
    correct_reasoning_tokens_mean: float | None = None
    all_correct_fraction: float | None = None
    all_wrong_fraction: float | None = None
    resample_rounds: float | None = None
    loss: float | None = None
    ratio_mean: float | None = None
    ratio_min: float | None = None
    ratio_max: float | None = None
    kl: float | None = None
    entropy: float | None = None
    clip_ratio: float | None = None
    clip_ratio_low: float | None = None
    clip_ratio_high: float | None = None
    # algorithm.rolloutCorrection on: the engine-trainer gap and the weights it gave
    rollout_trainer_kl: float | None = None
    is_weight_mean: float | None = None
    is_masked_ratio: float | None = None
    grad_norm: float | None = None
    step_seconds: float | None = None
    rollout_seconds: float | None = None
    reward_seconds: float | None = None
    train_seconds: float | None = None
    weight_sync_seconds: float | None = None
    # The rollout pool after the step: servers joined, and those serving the newest pushed
    # weights; the URLs of joined servers that missed a push (WeightSyncDegraded).
    rollout_servers: int | None = None
    serving_servers: int | None = None
    lagging_servers: list[str] | None = None
    # The weight version that generated the step's batch; the policy version it trained
    # minus that (0 on-policy; at most training.maxStaleness + weightSync.everySteps - 1).
    rollout_policy_version: int | None = None
    batch_staleness: int | None = None
    prompts: list[int] | None = None  # dataset indices of the step's prompts, in order
    # The latest evaluation (spec.evaluation), kept until the next one.
    eval_step: int | None = None
    eval_accuracy: float | None = None  # greedy
    eval_mean_at_k: float | None = None
    eval_pass_at_k: float | None = None
    eval_reasoning_tokens: float | None = None  # of correct greedy answers

    def to_wire(self) -> dict[str, Any]:
        """The JSON object served (camelCase, unset fields left out)."""
        return {
            to_camel(k): v for k, v in self.model_dump(by_alias=True, exclude_none=True).items()
        }


#: The fields the operator copies into ``AGPOJob.status`` (same camelCase names there).
CR_STATUS_FIELDS = (
    "step",
    "total_steps",
    "reward_mean",
    "completion_tokens_mean",
    "zero_variance_fraction",
    "policy_version",
    "serving_servers",
    "eval_step",
    "eval_accuracy",
    "eval_mean_at_k",
    "eval_pass_at_k",
    "eval_reasoning_tokens",
)


def wire_name(field: str) -> str:
    """The camelCase name of a :class:`TrainerProgress` field."""
    return to_camel(field)


def cr_status_values(data: Mapping[str, Any] | None) -> dict[str, int | float]:
    """The :data:`CR_STATUS_FIELDS` present and well-typed in a served ``/status`` object,
    by their wire names; a malformed field is skipped, not fatal (the trainer may be older)."""
    out: dict[str, int | float] = {}
    for name in CR_STATUS_FIELDS:
        value = (data or {}).get(wire_name(name))
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        try:
            parsed = TrainerProgress.model_validate({name: value})
        except ValidationError:
            continue
        out[wire_name(name)] = getattr(parsed, name)
    return out
