"""The resolved spec: the one object the trainer reads, with every default applied here, once.

``AGPOJobSpec`` is what a user wrote (validated; presets expanded into ``spec.algorithm``).
:func:`resolve` turns it into a :class:`ResolvedSpec`, whose algorithm section has no optional
field left: the clip range, the KL coefficient, what counts as correct, the length reward with
its token limits, the answer marker and the attainable reward range are all decided here. The
trainer's registered parts receive this section (or one options object built from it in one
place), so no part of the trainer applies a default or tests a registered name itself.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from pydantic import BaseModel

from agpo_api.catalog import LENGTH_REWARDS, POLICY_LOSSES, REWARDS, TASKS, ZERO_VARIANCE
from agpo_api.models import (
    AGPOJobSpec,
    AlgorithmSpec,
    DatasetSpec,
    EvaluationSpec,
    MetricsSpec,
    ModelSpec,
    RolloutCorrectionSpec,
    RolloutSpec,
    TrackingSpec,
    TrainerSpec,
    TrainingSpec,
)

#: Added to the group std in GRPO's advantage (TRL and verl use 1e-4).
ADVANTAGE_EPS = 1e-4
#: DAPO's soft overlong buffer when bufferTokens is unset: a fifth of maxTokens (4096 of 20480).
OVERLONG_BUFFER_FRACTION = 5


@dataclass(frozen=True)
class ResolvedReward:
    """One reward term: its registered name or ``module:function``, weight and range."""

    key: str
    weight: float
    bounds: tuple[float, float] | None  # attainable [min, max] unweighted; None: unknown


@dataclass(frozen=True)
class ResolvedLengthReward:
    """``algorithm.lengthReward`` with its type's defaults applied."""

    type: str
    coefficient: float
    max_tokens: int  # overlong's L_max: lengthReward.maxTokens, else maxCompletionTokens
    buffer_tokens: int | None  # overlong's buffer; None for types that do not read it
    scope: str
    target: str

    @property
    def active(self) -> bool:
        """Whether this type adds a length term to the rewards (a ``length`` component)."""
        return LENGTH_REWARDS.traits(self.type).active

    @property
    def homogeneous_bonus(self) -> float:
        """What the length term adds to every answer of an all-correct group of equal lengths
        (a scoped type with scope ``all``: ties get the full coefficient), so the top of the
        attainable reward moves up by it and AGPO's zero-variance rule still gives such a
        group its +1."""
        scoped = LENGTH_REWARDS.traits(self.type).scoped
        return self.coefficient if scoped and self.scope == "all" else 0.0


@dataclass(frozen=True)
class ResolvedAlgorithm:
    """``spec.algorithm`` with nothing left to default."""

    preset: str
    advantage: str
    zero_variance: str
    policy_loss: str
    loss_aggregation: str
    clip_low: float
    clip_high: float
    kl_coefficient: float
    gvpo_beta: float
    zero_variance_advantage: float
    advantage_eps: float
    max_resample_rounds: int
    group_size: int
    rewards: tuple[ResolvedReward, ...]
    correct_reward: str  # the reward that decides "correct"
    correct_threshold: float  # correct when that reward is above this
    length_reward: ResolvedLengthReward
    answer_marker: str  # reasoning ends at its last occurrence (or at </think>)
    reward_range: tuple[float, float] | None  # of the summed rewards; None: unknown
    rollout_correction: RolloutCorrectionSpec  # every field has its default

    @property
    def resamples(self) -> bool:
        """Whether the zero-variance policy draws more prompts until groups vary (DAPO)."""
        return ZERO_VARIANCE.traits(self.zero_variance).resamples

    @property
    def group_align(self) -> int:
        """Rows that must stay together in a micro-batch: a whole group when the policy loss
        needs whole groups (GVPO), else 1."""
        return self.group_size if POLICY_LOSSES.traits(self.policy_loss).whole_groups else 1


@dataclass(frozen=True)
class ResolvedSpec:
    """A job's spec as the trainer reads it: the sections as validated, the algorithm
    resolved, and the evaluation that runs (None when none does)."""

    model: ModelSpec
    dataset: DatasetSpec
    algorithm: ResolvedAlgorithm
    training: TrainingSpec
    trainer: TrainerSpec
    rollout: RolloutSpec
    metrics: MetricsSpec
    tracking: TrackingSpec
    evaluation: EvaluationSpec | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: the sections in their wire (camelCase) form, the resolved
        algorithm's fields by name (what the run header of the records and the trackers'
        params show)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    """``value`` as JSON data: a model by its aliases, a dataclass field by field."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def resolve(spec: AGPOJobSpec) -> ResolvedSpec:
    """The resolved form of a validated spec (:class:`ResolvedSpec`)."""
    answer_marker = answer_marker_of(spec)
    return ResolvedSpec(
        model=spec.model,
        dataset=spec.dataset,
        algorithm=resolve_algorithm_section(
            spec.algorithm, spec.training.max_completion_tokens, answer_marker
        ),
        training=spec.training,
        trainer=spec.trainer,
        rollout=spec.rollout,
        metrics=spec.metrics,
        tracking=spec.tracking,
        evaluation=spec.effective_evaluation(),
    )


def answer_marker_of(spec: AGPOJobSpec) -> str:
    """``evaluation.answerMarker`` when the spec sets it, else the builtin task's marker
    (its catalog traits), else the field's default."""
    ev, builtin = spec.evaluation, spec.dataset.source.builtin
    if ev is not None and "answer_marker" in ev.model_fields_set:
        return ev.answer_marker
    if builtin is not None and builtin.task in TASKS:
        return TASKS.traits(builtin.task).answer_marker
    return EvaluationSpec().answer_marker


def resolve_algorithm_section(
    algo: AlgorithmSpec, max_completion_tokens: int, answer_marker: str
) -> ResolvedAlgorithm:
    """``spec.algorithm`` (validated: the preset already fills the family fields) resolved."""
    if algo.advantage is None or algo.zero_variance is None or algo.policy_loss is None:
        raise ValueError("spec.algorithm is not validated: its preset fields are unset")
    if algo.loss_aggregation is None or algo.clip is None or algo.correct is None:
        raise ValueError("spec.algorithm is not validated: its preset fields are unset")
    rewards = tuple(
        ResolvedReward(
            key=r.name or r.function or "",
            weight=r.weight,
            bounds=(
                (r.bounds.min, r.bounds.max)
                if r.bounds is not None
                else REWARDS.traits(r.name).bounds
                if r.name is not None
                else None
            ),
        )
        for r in algo.rewards
    )
    length = resolve_length_reward(algo, max_completion_tokens)
    summed = summed_range(rewards)
    correct_reward = algo.correct.reward
    if correct_reward is None:  # the spec's rule: set when the rewards are custom only
        raise ValueError("spec.algorithm.correct.reward is unset")
    # the fields the validated spec already holds as the trainer needs them
    same = {f: getattr(algo, f) for f in _COPIED}
    return ResolvedAlgorithm(
        **same,
        preset=algo.preset or "",
        clip_low=_set(algo.clip.low, "clip.low"),
        clip_high=_set(algo.clip.high, "clip.high"),
        kl_coefficient=_set(algo.kl_coefficient, "klCoefficient"),
        advantage_eps=ADVANTAGE_EPS,
        rewards=rewards,
        correct_reward=correct_reward,
        correct_threshold=algo.correct.threshold,
        length_reward=length,
        answer_marker=answer_marker,
        reward_range=(
            None if summed is None else (summed[0], summed[1] + length.homogeneous_bonus)
        ),
    )


_COPIED = (
    "advantage", "zero_variance", "policy_loss", "loss_aggregation", "gvpo_beta",
    "zero_variance_advantage", "max_resample_rounds", "group_size", "rollout_correction",
)  # fmt: skip


def resolve_length_reward(algo: AlgorithmSpec, max_completion_tokens: int) -> ResolvedLengthReward:
    """``lengthReward`` (the preset's when unset) with maxTokens defaulting to the generation
    limit and, for a type that reads a limit (overlong), bufferTokens to a fifth of it."""
    lr = algo.length_reward
    if lr is None or lr.type is None or lr.coefficient is None:
        raise ValueError(
            "spec.algorithm.lengthReward is not validated: its preset fields are unset"
        )
    max_tokens = lr.max_tokens or max_completion_tokens
    buffer = lr.buffer_tokens
    if buffer is None and LENGTH_REWARDS.traits(lr.type).limit:
        buffer = max(1, max_tokens // OVERLONG_BUFFER_FRACTION)
    return ResolvedLengthReward(
        type=lr.type,
        coefficient=lr.coefficient,
        max_tokens=max_tokens,
        buffer_tokens=buffer,
        scope=lr.scope,
        target=lr.target,
    )


def summed_range(rewards: tuple[ResolvedReward, ...]) -> tuple[float, float] | None:
    """``(min, max)`` of ``sum_k w_k r_k`` over the rewards' bounds; None when one is unknown.

    Length rewards are left out: they are 0 on homogeneous groups (AGPO by construction, Kimi
    when lengths are equal, overlong below its buffer), except a scoped one with scope
    ``all``, which :attr:`ResolvedLengthReward.homogeneous_bonus` adds.
    """
    lo = hi = 0.0
    for r in rewards:
        if r.bounds is None:
            return None
        a, b = r.weight * r.bounds[0], r.weight * r.bounds[1]
        lo += min(a, b)
        hi += max(a, b)
    return lo, hi


def _set(value: float | None, name: str) -> float:
    if value is None:
        raise ValueError(f"spec.algorithm.{name} is not validated: its preset value is unset")
    return value
