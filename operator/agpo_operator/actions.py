"""What :func:`agpo_operator.decide.decide` hands back: a :class:`Decision` with the actions to
take, the Events to post and the outcomes to count.

Each action is a frozen dataclass, a value (compared in tests, logged as
``DeletePods(names=(...))``), carried out as one API operation by
:func:`agpo_operator.act.perform`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agpo_api.vocabulary import EventType, Reason


@dataclass(frozen=True)
class CreateStatic:
    """The job's ConfigMap, Secret, ServiceAccount, Services, NetworkPolicies, checkpoint
    claim, PodMonitor: all of them, or ``only`` these (``Kind/name``: deleted ones)."""

    only: tuple[str, ...] = ()


@dataclass(frozen=True)
class CreateRollout:
    """The vLLM StatefulSets the spec needs: all of them, or ``only`` these (``Kind/name``:
    the extra servers' StatefulSet of a gang job scaled above its gang)."""

    only: tuple[str, ...] = ()


@dataclass(frozen=True)
class CreateTrainer:
    """The trainer Job of one attempt (``status.restarts`` at the time)."""

    attempt: int


@dataclass(frozen=True)
class ScaleRollout:
    """A vLLM StatefulSet to ``replicas`` servers (its scale subresource): the job's, or with
    ``extra`` a gang job's servers above its gang. Nothing else of the job changes: the
    trainer finds the servers by DNS (``AGPO_ROLLOUT_DISCOVERY``)."""

    replicas: int
    extra: bool = False


@dataclass(frozen=True)
class DeleteRollout:
    """The vLLM StatefulSets that exist (and their pods): the job's own, and a gang job's
    extra one (``extra``: the servers above its gang)."""

    main: bool = True
    extra: bool = False


@dataclass(frozen=True)
class DeleteTrainer:
    """The trainer Job (and its pods)."""


@dataclass(frozen=True)
class SuspendTrainer:
    """Suspend the trainer Job: its running pods stop, finished pods and logs stay."""


@dataclass(frozen=True)
class DeletePods:
    """Individual pods (a broken rollout server: its StatefulSet recreates it)."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class DeleteJob:
    """The AGPOJob itself (ttlSecondsAfterFinished)."""


Action = (
    CreateStatic
    | CreateRollout
    | CreateTrainer
    | ScaleRollout
    | DeleteRollout
    | DeleteTrainer
    | SuspendTrainer
    | DeletePods
    | DeleteJob
)
#: Actions carried out before the status write (see :meth:`agpo_operator.loop.JobLoop.apply`).
CREATES = (CreateStatic, CreateRollout, CreateTrainer)


def is_create(action: Action) -> bool:
    return isinstance(action, CREATES)


class Outcome(StrEnum):
    """What :mod:`agpo_operator.metrics` counts (``Decision.counters``)."""

    CREATED = "created"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RESTARTED = "restarted"
    REPLACED = "replaced"  # a failed vLLM pod deleted for its StatefulSet to recreate


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: Reason
    message: str


@dataclass
class Decision:
    status: dict[str, Any]
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    counters: list[tuple[Outcome, str]] = field(default_factory=list)  # (outcome, reason)
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue_after = (
            seconds if self.requeue_after is None else min(self.requeue_after, seconds)
        )
