"""The job's lifecycle transitions: create, suspend, resume, succeed, fail, finish.

Each step edits a :class:`~agpo_operator.machine.Machine`. Creating makes the static children,
the initial conditions and (unless created suspended) this attempt's StatefulSet and trainer
Job; suspending removes the pods and keeps the checkpoints; resuming starts the clocks again.
A finished job (Succeeded or Failed) has its pods cleaned up as ``runPolicy.cleanPodPolicy``
says and is deleted ``ttlSecondsAfterFinished`` after its ``completionTime``; a job running
longer than ``activeDeadlineSeconds`` since its start (or last resume) fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agpo_api.progress import cr_status_values
from agpo_api.vocabulary import ConditionType, EventType, Phase, Reason
from agpo_operator.actions import (
    CreateRollout,
    CreateStatic,
    CreateTrainer,
    Decision,
    DeleteJob,
    DeleteTrainer,
    Event,
    Outcome,
    SuspendTrainer,
)
from agpo_operator.builders.storage import ephemeral_checkpoints
from agpo_operator.conditions import is_true, parse_time
from agpo_operator.machine import Machine, initial_conditions
from agpo_operator.observe import JobCondition, PodView, deleting, job_condition
from agpo_operator.pool import delete_rollout, no_servers

C, R = ConditionType, Reason


def invalid(m: Machine) -> Decision:
    """A spec the model refuses (it passed the CRD schema): Failed/InvalidSpec, no children."""
    message = "invalid spec: " + "; ".join(m.obs.problems)
    if m.st.get("phase") != Phase.FAILED or not is_true(m.st, C.FAILED):
        m.count(Outcome.FAILED, R.INVALID_SPEC)
    m.cond(C.CREATED, False, R.INVALID_SPEC, "no child objects are created for an invalid spec")
    initial_conditions(m)
    m.cond(C.FAILED, True, R.INVALID_SPEC, message, EventType.WARNING)
    m.phase(Phase.FAILED, message)
    m.st.setdefault("completionTime", m.now)
    return m.finish()


def create(m: Machine) -> None:
    spec = m.spec
    m.act(CreateStatic())
    m.cond(C.CREATED, True, R.CHILDREN_CREATED, "the job's child objects are created",
           EventType.NORMAL)  # fmt: skip
    initial_conditions(m)
    m.st["restarts"] = 0
    m.st["totalSteps"] = spec.training.steps
    m.count(Outcome.CREATED)
    if ephemeral_checkpoints(spec):
        message = (
            "training.checkpoint.storage.emptyDir is true: checkpoints are lost when the trainer "
            "pod is replaced (restart, eviction, node loss) and training starts over from step 0; "
            "remove emptyDir to get a claim"
        )
        m.cond(C.EPHEMERAL_CHECKPOINTS, True, R.CHECKPOINTS_ON_EMPTY_DIR, message,
               EventType.WARNING)  # fmt: skip
    if spec.run_policy.suspend:
        m.cond(C.SUSPENDED, True, R.SUSPENDED, "created suspended: no pods run", EventType.NORMAL)
        m.phase(Phase.SUSPENDED, "suspended")
        return
    m.act(CreateRollout())
    m.act(CreateTrainer(0))
    m.st["startTime"] = m.now
    m.st["waitingSince"] = m.now
    m.phase(Phase.PENDING, "waiting for the rollout and trainer pods")
    _deadline_requeue(m)


def recreate_static(m: Machine) -> None:
    """Static children someone deleted are created again (level-based: observed missing)."""
    if not m.obs.missing_static:
        return
    m.act(CreateStatic(m.obs.missing_static))
    message = "recreated deleted children: " + ", ".join(m.obs.missing_static)
    m.d.events.append(Event(EventType.WARNING, R.CHILDREN_RECREATED, message))


def _trainer_stopped(job: Mapping[str, Any]) -> bool:
    """The trainer Job finished or is suspended: it runs no pods."""
    return bool(
        job_condition(job, JobCondition.COMPLETE)
        or job_condition(job, JobCondition.FAILED)
        or (job.get("spec") or {}).get("suspend")
    )


def _cleanup(m: Machine) -> None:
    """Remove pods after the job finished, as runPolicy.cleanPodPolicy says.

    All: the vLLM StatefulSet and the trainer Job go. Running: the StatefulSet goes and an
    unfinished trainer Job is suspended (its running pods stop; finished pods and their logs
    stay). None: nothing is removed (the vLLM servers keep their GPUs).
    """
    policy = m.spec.run_policy.clean_pod_policy
    if policy == "None":
        return
    tj = m.obs.trainer_job
    if (delete := delete_rollout(m.obs)) is not None:
        m.act(delete)
        no_servers(m)  # a finished job's StatefulSets are not read again
    if tj is None or deleting(tj):
        return
    if policy == "All":
        m.act(DeleteTrainer())
    elif not _trainer_stopped(tj):
        m.act(SuspendTrainer())


def finished(m: Machine) -> None:
    """A finished job: clean up its pods; delete it ttlSecondsAfterFinished after it finished."""
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


def _stop_conditions(m: Machine, reason: Reason, message: str) -> None:
    m.cond(C.RUNNING, False, reason, message)
    m.cond(C.ROLLOUT_READY, False, R.ROLLOUT_STOPPED, "the vLLM servers are stopped")
    if is_true(m.st, C.RESTARTING):
        m.cond(C.RESTARTING, False, reason, message)


def fail(m: Machine, reason: Reason, message: str) -> None:
    m.cond(C.FAILED, True, reason, message, EventType.WARNING)
    _stop_conditions(m, R.FAILED, message)
    m.phase(Phase.FAILED, message)
    m.st["completionTime"] = m.now
    m.st.pop("waitingSince", None)
    m.count(Outcome.FAILED, reason)
    finished(m)


def succeed(m: Machine, trainer: list[PodView]) -> None:
    # The final poll: rank 0's last /status, from its termination message (the process has
    # exited, so its server cannot answer any more; the last periodic poll may be old).
    final = next((p.termination for p in trainer if p.index == 0 and p.termination), None)
    if final is not None and final.kind is None:
        m.st.update(cr_status_values(final.progress))
    message = "training finished: every trainer pod succeeded"
    m.cond(C.SUCCEEDED, True, R.TRAINING_SUCCEEDED, message, EventType.NORMAL)
    _stop_conditions(m, R.SUCCEEDED, message)
    m.phase(Phase.SUCCEEDED, message)
    m.st["completionTime"] = m.now
    m.st.pop("waitingSince", None)
    m.count(Outcome.SUCCEEDED)
    finished(m)


def suspend(m: Machine) -> None:
    tj = m.obs.trainer_job
    if (delete := delete_rollout(m.obs)) is not None:
        m.act(delete)
    if tj is not None and not deleting(tj):
        m.act(DeleteTrainer())
    message = "spec.runPolicy.suspend is true: pods are removed, checkpoints are kept"
    m.cond(C.SUSPENDED, True, R.SUSPENDED, message, EventType.NORMAL)
    _stop_conditions(m, R.SUSPENDED, message)
    m.phase(Phase.SUSPENDED, message)
    for key in ("waitingSince", "lastProgressTime"):  # time suspended counts for nothing
        m.st.pop(key, None)


def resume(m: Machine) -> None:
    message = "resumed: pods are recreated; training continues from the newest checkpoint"
    m.cond(C.SUSPENDED, False, R.RESUMED, message, EventType.NORMAL)
    m.st["startTime"] = m.now  # the deadline counts running time since the last resume
    m.st["waitingSince"] = m.now
    m.phase(Phase.PENDING, message)


def _deadline_requeue(m: Machine) -> float | None:
    ads = m.spec.run_policy.active_deadline_seconds
    start = parse_time(m.st.get("startTime"))
    if ads is None or start is None:
        return None
    remaining = (start - m.obs.now).total_seconds() + ads
    m.d.requeue(remaining)
    return remaining


def deadline(m: Machine) -> bool:
    """activeDeadlineSeconds ran out: Failed/DeadlineExceeded (True); else a wake-up for it."""
    remaining = _deadline_requeue(m)
    if remaining is None or remaining > 0:
        return False
    ads = m.spec.run_policy.active_deadline_seconds
    fail(m, R.DEADLINE_EXCEEDED, f"the job ran longer than activeDeadlineSeconds ({ads}s)")
    return True
