"""The working state of one decision: the status being edited, the actions, events and counters.

:func:`~agpo_operator.decide.decide` makes one :class:`Machine` per observation; the steps of
:mod:`agpo_operator.lifecycle` and :mod:`agpo_operator.health` edit it, and
:meth:`Machine.finish` hands back the :class:`~agpo_operator.actions.Decision`.
"""

from __future__ import annotations

import copy

from agpo_api import AGPOJobSpec
from agpo_api.vocabulary import ConditionType, EventType, Phase, Reason
from agpo_operator.actions import Action, Decision, Event, Outcome
from agpo_operator.conditions import condition, set_condition, timestamp
from agpo_operator.observe import Observation

C, R = ConditionType, Reason


# The conditions every created job has, with their initial (False) reason and message.
INITIAL_CONDITIONS = (
    (C.ROLLOUT_READY, R.ROLLOUT_PENDING, "the vLLM servers are starting"),
    (C.RUNNING, R.PENDING, "the trainer group has not started"),
    (C.RESTARTING, R.NO_RESTART, "no restart so far"),
    (C.SUSPENDED, R.NOT_SUSPENDED, "the job is not suspended"),
    (C.SUCCEEDED, R.NOT_FINISHED, "training has not finished"),
    (C.FAILED, R.NOT_FAILED, "the job has not failed"),
)


class Machine:
    """Mutable working state of one decision (status edits + actions + events)."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.now = timestamp(obs.now)
        self.d = Decision(status=copy.deepcopy(dict(obs.status)))
        self.st = self.d.status

    def cond(self, ctype: ConditionType, status: bool, reason: Reason, message: str,
             event: EventType | None = None) -> None:  # fmt: skip
        """Set a condition; post ``event`` when its status or reason changes."""
        noteworthy = set_condition(
            self.st, ctype, status, reason, message, now=self.now, generation=self.obs.generation
        )
        if event and noteworthy:
            self.d.events.append(Event(event, reason, message))

    def phase(self, phase: Phase, message: str | None = None) -> None:
        self.st["phase"] = phase.value
        if message is not None:
            self.st["message"] = message

    @property
    def spec(self) -> AGPOJobSpec:
        assert self.obs.spec is not None
        return self.obs.spec

    def act(self, action: Action) -> None:
        self.d.actions.append(action)

    def count(self, outcome: Outcome, reason: str = "") -> None:
        self.d.counters.append((outcome, reason))

    def finish(self) -> Decision:
        self.st["observedGeneration"] = self.obs.generation
        return self.d


def initial_conditions(m: Machine) -> None:
    """Add the :data:`INITIAL_CONDITIONS` the status does not have yet."""
    for ctype, reason, message in INITIAL_CONDITIONS:
        if condition(m.st, ctype) is None:
            m.cond(ctype, False, reason, message)
