"""Decide: the job's state machine as a pure function, observation in, decision out.

:func:`decide` takes an :class:`~agpo_operator.observe.Observation` (the job's spec and current
status, its workload objects and pods, the trainer's reported progress, the time) and returns
a :class:`Decision`: the new status (phase + metav1-style conditions), the actions to take
(:mod:`agpo_operator.actions`), the Kubernetes Events to post and the outcomes to count. It is
level-based: the same observation always gives the same decision, so an operator restart or a
repeated reconcile repeats nothing that the status already records (a restart is counted once
because ``status.restarts`` is written before the old trainer Job is deleted).

Phases: Pending -> Initializing -> Running -> Succeeded | Failed, with Restarting (a trainer or
rollout pod failed; the trainer group restarts from its newest checkpoint) and Suspended.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from agpo_api import AGPOJobSpec
from agpo_api.progress import cr_status_values
from agpo_api.vocabulary import TERMINAL_PHASES, ConditionType, EventType, Phase, Reason
from agpo_operator.actions import (
    Action,
    CreateRollout,
    CreateStatic,
    CreateTrainer,
    Decision,
    DeleteJob,
    DeletePods,
    DeleteRollout,
    DeleteTrainer,
    Event,
    Outcome,
    SuspendTrainer,
)
from agpo_operator.builders.common import ATTEMPT_LABEL
from agpo_operator.conditions import condition, is_true, parse_time, set_condition, timestamp
from agpo_operator.observe import (
    JobCondition,
    Observation,
    PodPhase,
    PodView,
    deleting,
    job_condition,
)

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


class _Machine:
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


def _initial_conditions(m: _Machine) -> None:
    for ctype, reason, message in INITIAL_CONDITIONS:
        if condition(m.st, ctype) is None:
            m.cond(ctype, False, reason, message)


# --------------------------------------------------------------------------- the decision
def decide(obs: Observation) -> Decision:
    """The new status, actions, events and counters for one observation of one job."""
    m = _Machine(obs)
    if obs.spec is None:
        return _invalid(m)
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
        _finished(m)
        return m.finish()
    if not created:
        _create(m)
        return m.finish()
    if m.spec.run_policy.suspend:
        _suspend(m)
        return m.finish()
    if phase == Phase.SUSPENDED:
        _resume(m)
    if _deadline(m):
        return m.finish()
    m.st.update(cr_status_values(m.obs.progress))
    if _workloads(m):
        _pods(m)
    return m.finish()


def _invalid(m: _Machine) -> Decision:
    """A spec the model refuses (it passed the CRD schema): Failed/InvalidSpec, no children."""
    message = "invalid spec: " + "; ".join(m.obs.problems)
    if m.st.get("phase") != Phase.FAILED or not is_true(m.st, C.FAILED):
        m.count(Outcome.FAILED, R.INVALID_SPEC)
    m.cond(C.CREATED, False, R.INVALID_SPEC, "no child objects are created for an invalid spec")
    _initial_conditions(m)
    m.cond(C.FAILED, True, R.INVALID_SPEC, message, EventType.WARNING)
    m.phase(Phase.FAILED, message)
    m.st.setdefault("completionTime", m.now)
    return m.finish()


def _spec_change(m: _Machine) -> None:
    if m.obs.refused:
        message = (
            "; ".join(m.obs.refused)
            + ". The job keeps running with its original spec: revert the change, or delete "
            "and recreate the job (only runPolicy.suspend, activeDeadlineSeconds, "
            "ttlSecondsAfterFinished, backoffLimit and cleanPodPolicy may change)"
        )
        m.cond(C.SPEC_CHANGE_REFUSED, True, m.obs.refused_reason, message, EventType.WARNING)
    elif is_true(m.st, C.SPEC_CHANGE_REFUSED):
        m.cond(C.SPEC_CHANGE_REFUSED, False, R.SPEC_ACCEPTED, "the spec matches the running job",
               EventType.NORMAL)  # fmt: skip


def _create(m: _Machine) -> None:
    spec = m.spec
    m.act(CreateStatic())
    m.cond(C.CREATED, True, R.CHILDREN_CREATED, "the job's child objects are created",
           EventType.NORMAL)  # fmt: skip
    _initial_conditions(m)
    m.st["restarts"] = 0
    m.st["totalSteps"] = spec.training.steps
    m.count(Outcome.CREATED)
    if spec.run_policy.suspend:
        m.cond(C.SUSPENDED, True, R.SUSPENDED, "created suspended: no pods run", EventType.NORMAL)
        m.phase(Phase.SUSPENDED, "suspended")
        return
    m.act(CreateRollout())
    m.act(CreateTrainer(0))
    m.st["startTime"] = m.now
    m.phase(Phase.PENDING, "waiting for the rollout and trainer pods")
    _deadline_requeue(m)


def _trainer_stopped(job: Mapping[str, Any]) -> bool:
    """The trainer Job finished or is suspended: it runs no pods."""
    return bool(
        job_condition(job, JobCondition.COMPLETE)
        or job_condition(job, JobCondition.FAILED)
        or (job.get("spec") or {}).get("suspend")
    )


def _cleanup(m: _Machine) -> None:
    """Remove pods after the job finished, as runPolicy.cleanPodPolicy says.

    All: the vLLM StatefulSet and the trainer Job go. Running: the StatefulSet goes and an
    unfinished trainer Job is suspended (its running pods stop; finished pods and their logs
    stay). None: nothing is removed (the vLLM servers keep their GPUs).
    """
    policy = m.spec.run_policy.clean_pod_policy
    if policy == "None":
        return
    sts, tj = m.obs.statefulset, m.obs.trainer_job
    if sts is not None and not deleting(sts):
        m.act(DeleteRollout())
    if tj is None or deleting(tj):
        return
    if policy == "All":
        m.act(DeleteTrainer())
    elif not _trainer_stopped(tj):
        m.act(SuspendTrainer())


def _finished(m: _Machine) -> None:
    _cleanup(m)
    ttl = m.spec.run_policy.ttl_seconds_after_finished
    done = parse_time(m.st.get("completionTime"))
    if ttl is None or done is None:
        return
    remaining = (done - m.obs.now).total_seconds() + ttl
    if remaining <= 0:
        m.act(DeleteJob())
        message = f"deleting the job {ttl}s after it finished"
        m.d.events.append(Event(EventType.NORMAL, R.TTL_EXPIRED, message))
    else:
        m.d.requeue(remaining)


def _stop_conditions(m: _Machine, reason: Reason, message: str) -> None:
    m.cond(C.RUNNING, False, reason, message)
    m.cond(C.ROLLOUT_READY, False, R.ROLLOUT_STOPPED, "the vLLM servers are stopped")
    if is_true(m.st, C.RESTARTING):
        m.cond(C.RESTARTING, False, reason, message)


def _fail(m: _Machine, reason: Reason, message: str) -> None:
    m.cond(C.FAILED, True, reason, message, EventType.WARNING)
    _stop_conditions(m, R.FAILED, message)
    m.phase(Phase.FAILED, message)
    m.st["completionTime"] = m.now
    m.count(Outcome.FAILED, reason)
    _finished(m)


def _succeed(m: _Machine) -> None:
    message = "training finished: every trainer pod succeeded"
    m.cond(C.SUCCEEDED, True, R.TRAINING_SUCCEEDED, message, EventType.NORMAL)
    _stop_conditions(m, R.SUCCEEDED, message)
    m.phase(Phase.SUCCEEDED, message)
    m.st["completionTime"] = m.now
    m.count(Outcome.SUCCEEDED)
    _finished(m)


def _suspend(m: _Machine) -> None:
    sts, tj = m.obs.statefulset, m.obs.trainer_job
    if sts is not None and not deleting(sts):
        m.act(DeleteRollout())
    if tj is not None and not deleting(tj):
        m.act(DeleteTrainer())
    message = "spec.runPolicy.suspend is true: pods are removed, checkpoints are kept"
    m.cond(C.SUSPENDED, True, R.SUSPENDED, message, EventType.NORMAL)
    _stop_conditions(m, R.SUSPENDED, message)
    m.phase(Phase.SUSPENDED, message)


def _resume(m: _Machine) -> None:
    message = "resumed: pods are recreated; training continues from the newest checkpoint"
    m.cond(C.SUSPENDED, False, R.RESUMED, message, EventType.NORMAL)
    m.st["startTime"] = m.now  # the deadline counts running time since the last resume
    m.phase(Phase.PENDING, message)


def _deadline_requeue(m: _Machine) -> float | None:
    ads = m.spec.run_policy.active_deadline_seconds
    start = parse_time(m.st.get("startTime"))
    if ads is None or start is None:
        return None
    remaining = (start - m.obs.now).total_seconds() + ads
    m.d.requeue(remaining)
    return remaining


def _deadline(m: _Machine) -> bool:
    remaining = _deadline_requeue(m)
    if remaining is None or remaining > 0:
        return False
    ads = m.spec.run_policy.active_deadline_seconds
    _fail(m, R.DEADLINE_EXCEEDED, f"the job ran longer than activeDeadlineSeconds ({ads}s)")
    return True


def _workloads(m: _Machine) -> bool:
    """Make sure this attempt's StatefulSet and trainer Job exist; True when pods can be read."""
    attempt = int(m.st.get("restarts") or 0)
    if m.obs.statefulset is None:
        m.act(CreateRollout())
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


def _pods(m: _Machine) -> None:
    spec, obs = m.spec, m.obs
    trainer = [p for p in obs.trainer_pods if not p.deleting]
    rollout = [p for p in obs.rollout_pods if not p.deleting]
    done = {p.index for p in trainer if p.phase == PodPhase.SUCCEEDED}
    if job_condition(obs.trainer_job, JobCondition.COMPLETE) or len(done) >= spec.trainer.nodes:
        _succeed(m)
        return
    failure = _trainer_failure(obs.trainer_job, trainer)
    broken = [p for p in rollout if p.phase == PodPhase.FAILED or p.restarts > 0]
    restarting = m.st.get("phase") == Phase.RESTARTING
    if failure is None and broken and not restarting:
        p = broken[0]
        failure = (R.ROLLOUT_POD_FAILED, f"rollout pod {p.name} failed: {p.problem or p.phase}")
    if failure is not None:
        _restart_or_fail(m, *failure, [p.name for p in broken])
        return
    if broken:  # a rollout pod died during a restart: replace it, count nothing twice
        m.act(DeletePods(tuple(p.name for p in broken)))
    _readiness(m, trainer, rollout)


def _trainer_failure(
    job: Mapping[str, Any] | None, pods: list[PodView]
) -> tuple[Reason, str] | None:
    failed = [p for p in pods if p.phase == PodPhase.FAILED]
    if failed:
        p = failed[0]
        where = f" (rank {p.index})" if p.index is not None else ""
        return R.TRAINER_POD_FAILED, f"trainer pod {p.name}{where} failed: {p.problem or 'Failed'}"
    cond = job_condition(job, JobCondition.FAILED)
    if cond is not None:
        return (
            R.TRAINER_JOB_FAILED,
            f"trainer Job failed: {cond.get('reason', '')} {cond.get('message', '')}".strip(),
        )
    return None


def _restart_or_fail(m: _Machine, reason: Reason, message: str, broken: list[str]) -> None:
    restarts = int(m.st.get("restarts") or 0)
    limit = m.spec.run_policy.backoff_limit
    if restarts >= limit:
        _fail(m, R.BACKOFF_LIMIT_EXCEEDED, f"{message}; backoffLimit {limit} reached")
        return
    restarts += 1
    m.st["restarts"] = restarts
    text = (
        f"{message}; restarting the trainer group from its newest checkpoint ({restarts}/{limit})"
    )
    m.cond(C.RESTARTING, True, reason, text, EventType.WARNING)
    m.cond(C.RUNNING, False, R.RESTARTING, text)
    m.phase(Phase.RESTARTING, text)
    m.count(Outcome.RESTARTED, reason)
    m.act(DeleteTrainer())
    if broken:
        m.act(DeletePods(tuple(broken)))


def _readiness(m: _Machine, trainer: list[PodView], rollout: list[PodView]) -> None:
    spec = m.spec
    replicas, nodes = spec.rollout.replicas, spec.trainer.nodes
    ready = sum(p.ready and p.phase == PodPhase.RUNNING for p in rollout)
    running = sum(p.phase == PodPhase.RUNNING for p in trainer)
    rollout_msg = f"{ready}/{replicas} vLLM servers ready"
    if ready >= replicas:
        m.cond(C.ROLLOUT_READY, True, R.ALL_REPLICAS_READY, rollout_msg, EventType.NORMAL)
    else:
        lost = EventType.WARNING if is_true(m.st, C.ROLLOUT_READY) else None
        m.cond(C.ROLLOUT_READY, False, R.REPLICAS_NOT_READY, rollout_msg, lost)
    trainer_msg = f"{running}/{nodes} trainer pods running"
    if ready >= replicas and running >= nodes:
        both = f"{trainer_msg}; {rollout_msg}"
        m.cond(C.RUNNING, True, R.TRAINER_RUNNING, both, EventType.NORMAL)
        if is_true(m.st, C.RESTARTING):
            text = f"restart {m.st.get('restarts')} is running (resumed from the newest checkpoint)"
            m.cond(C.RESTARTING, False, R.RECOVERED, text, EventType.NORMAL)
        step, total = m.st.get("step"), m.st.get("totalSteps")
        m.phase(Phase.RUNNING, f"training: step {step}/{total}" if step is not None else "training")
        return
    waiting = next((f"{p.name}: {p.waiting}" for p in [*rollout, *trainer] if p.waiting), "")
    message = f"{rollout_msg}; {trainer_msg}" + (f"; waiting for {waiting}" if waiting else "")
    stalled = EventType.WARNING if is_true(m.st, C.RUNNING) else None
    m.cond(C.RUNNING, False, R.PODS_NOT_READY, message, stalled)
    if m.st.get("phase") == Phase.RESTARTING:
        m.st["message"] = message
    elif ready or running or any(p.phase == PodPhase.RUNNING for p in rollout):
        m.phase(Phase.INITIALIZING, message)
    else:
        m.phase(Phase.PENDING, message)
