"""Decide: the job's state machine as a pure function, observation in, decision out.

:func:`decide` takes an :class:`~agpo_operator.observe.Observation` (the job's spec and current
status, its workload objects and pods, the trainer's reported progress, the time) and returns
a :class:`Decision`: the new status (phase + metav1-style conditions), the actions to take
(:mod:`agpo_operator.actions`), the Kubernetes Events to post and the outcomes to count. It is
level-based: the same observation always gives the same decision, so an operator restart or a
repeated reconcile repeats nothing that the status already records (a restart is counted once
because ``status.restarts`` is written before the old trainer Job is deleted).

Phases: Pending -> Initializing -> Running -> Succeeded | Failed, with Restarting (a trainer pod
failed, or a rollout pod before the group ran; the trainer group restarts from its newest
checkpoint) and Suspended. A rollout pod that fails once the group runs is replaced alone.

This module holds the phase flow; the steps live in :mod:`agpo_operator.lifecycle` (create,
suspend, resume, succeed, fail, cleanup, TTL, deadline) and :mod:`agpo_operator.health` (failure
classification, restarts, readiness, startup and progress timeouts), all editing one
:class:`~agpo_operator.machine.Machine`.
"""

from __future__ import annotations

from agpo_api.progress import cr_status_values
from agpo_api.vocabulary import TERMINAL_PHASES, ConditionType, EventType, Phase, Reason
from agpo_operator.actions import CreateRollout, CreateTrainer, Decision, DeleteTrainer
from agpo_operator.builders.common import ATTEMPT_LABEL, Names
from agpo_operator.builders.rollout import ROLLOUT_STATEFULSET
from agpo_operator.conditions import condition, is_true
from agpo_operator.health import check_pods
from agpo_operator.lifecycle import (
    create,
    deadline,
    finished,
    invalid,
    recreate_static,
    resume,
    suspend,
)
from agpo_operator.machine import Machine
from agpo_operator.observe import Observation, deleting
from agpo_operator.pool import report, scale, weight_sync
from agpo_operator.spec_change import mutable_names

C, R = ConditionType, Reason


def decide(obs: Observation) -> Decision:
    """The new status, actions, events and counters for one observation of one job."""
    m = Machine(obs)
    if obs.spec is None:
        return invalid(m)
    _spec_change(m)
    phase = m.st.get("phase")
    created = is_true(m.st, C.CREATED)
    failed_cond = condition(m.st, C.FAILED)
    if (
        phase == Phase.FAILED
        and not created
        and failed_cond
        and failed_cond.get("reason") == R.INVALID_SPEC
    ):
        # The spec was invalid before anything was created and is valid now: start over.
        m.cond(C.FAILED, False, R.SPEC_CORRECTED, "the spec is valid now", EventType.NORMAL)
        phase = None
    if phase in TERMINAL_PHASES:
        finished(m)
        return m.finish()
    report(m)
    if not created:
        create(m)
        return m.finish()
    recreate_static(m)
    if m.spec.run_policy.suspend:
        suspend(m)
        return m.finish()
    if phase == Phase.SUSPENDED:
        resume(m)
    if deadline(m):
        return m.finish()
    m.st.update(cr_status_values(m.obs.progress))
    weight_sync(m)
    if _workloads(m):
        check_pods(m)
    return m.finish()


def _spec_change(m: Machine) -> None:
    if m.obs.refused:
        message = (
            "; ".join(m.obs.refused)
            + ". The job keeps running with its original spec: revert the change, or delete "
            f"and recreate the job (only {mutable_names()} may change on it)"
        )
        m.cond(C.SPEC_CHANGE_REFUSED, True, m.obs.refused_reason, message, EventType.WARNING)
    elif is_true(m.st, C.SPEC_CHANGE_REFUSED):
        m.cond(C.SPEC_CHANGE_REFUSED, False, R.SPEC_ACCEPTED, "the spec matches the running job",
               EventType.NORMAL)  # fmt: skip


def _workloads(m: Machine) -> bool:
    """Make sure this attempt's StatefulSet and trainer Job exist; True when pods can be read."""
    attempt = int(m.st.get("restarts") or 0)
    if m.obs.statefulset is None and m.obs.extra_statefulset is None:
        m.act(CreateRollout())
    elif m.obs.statefulset is None:  # the gang's alone: the extra one exists (no 409 for it)
        m.act(CreateRollout((ROLLOUT_STATEFULSET.key(Names(m.obs.name, m.obs.namespace)),)))
    else:
        scale(m)
    tj = m.obs.trainer_job
    if tj is None:
        m.act(CreateTrainer(attempt))
        return False
    if deleting(tj):
        return False  # the previous attempt's pods are still going away
    labels = tj.get("metadata", {}).get("labels") or {}
    if labels.get(ATTEMPT_LABEL) != str(attempt):
        m.act(DeleteTrainer())  # left over from before a restart
        return False
    return True
