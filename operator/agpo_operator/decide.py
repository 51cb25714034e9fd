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

Failures are classified by the pods' termination messages (:mod:`agpo_api.termination`):
permanent ones fail the job at once, transient ones restart the group within backoffLimit.
The run policy's timeouts count from times kept in the status (``waitingSince``,
``lastProgressTime``), so they are level-based too.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from agpo_api import AGPOJobSpec
from agpo_api.progress import cr_status_values
from agpo_api.termination import Termination
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
from agpo_operator.builders.common import ATTEMPT_LABEL, Names
from agpo_operator.builders.storage import ephemeral_checkpoints
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
    _recreate_static(m)
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


def _recreate_static(m: _Machine) -> None:
    """Static children someone deleted are created again (level-based: observed missing)."""
    if not m.obs.missing_static:
        return
    m.act(CreateStatic(m.obs.missing_static))
    message = "recreated deleted children: " + ", ".join(m.obs.missing_static)
    m.d.events.append(Event(EventType.WARNING, R.CHILDREN_RECREATED, message))


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
            "ttlSecondsAfterFinished, backoffLimit, cleanPodPolicy, startupTimeoutSeconds and "
            "progressTimeoutSeconds may change)"
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
    m.st.pop("waitingSince", None)
    m.count(Outcome.FAILED, reason)
    _finished(m)


def _succeed(m: _Machine, trainer: list[PodView]) -> None:
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
    for key in ("waitingSince", "lastProgressTime"):  # time suspended counts for nothing
        m.st.pop(key, None)


def _resume(m: _Machine) -> None:
    message = "resumed: pods are recreated; training continues from the newest checkpoint"
    m.cond(C.SUSPENDED, False, R.RESUMED, message, EventType.NORMAL)
    m.st["startTime"] = m.now  # the deadline counts running time since the last resume
    m.st["waitingSince"] = m.now
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
        _succeed(m, trainer)
        return
    if _token_missing(m, trainer, rollout):
        return
    failure = _trainer_failure(obs.trainer_job, trainer)
    broken = [p for p in rollout if p.phase == PodPhase.FAILED or p.restarts > 0]
    restarting = m.st.get("phase") == Phase.RESTARTING
    if failure is None and broken and not restarting:
        p = broken[0]
        message = f"rollout pod {p.name} failed: {p.problem or p.phase}"
        failure = (R.ROLLOUT_POD_FAILED, message, _permanent(p.termination))
    if failure is not None:
        reason, message, permanent = failure
        if permanent:
            _fail(m, R.PERMANENT_FAILURE, f"{message}; not retried: the spec or the data must "
                  "change (a permanent failure spends no backoffLimit)")  # fmt: skip
        else:
            _restart_or_fail(m, reason, message, [p.name for p in broken])
        return
    if broken:  # a rollout pod died during a restart: replace it, count nothing twice
        m.act(DeletePods(tuple(p.name for p in broken)))
    _readiness(m, trainer, rollout)


def _permanent(termination: Termination | None) -> bool:
    return termination is not None and termination.permanent


def _trainer_failure(
    job: Mapping[str, Any] | None, pods: list[PodView]
) -> tuple[Reason, str, bool] | None:
    """The trainer group's failure: (reason, message, permanent). A permanent pod failure
    wins over a transient one (the other ranks die of the first one's exit)."""
    failed = sorted(
        (p for p in pods if p.phase == PodPhase.FAILED), key=lambda p: not _permanent(p.termination)
    )
    if failed:
        p = failed[0]
        where = f" (rank {p.index})" if p.index is not None else ""
        message = f"trainer pod {p.name}{where} failed: {p.problem or 'Failed'}"
        return R.TRAINER_POD_FAILED, message, _permanent(p.termination)
    cond = job_condition(job, JobCondition.FAILED)
    if cond is not None:
        message = f"trainer Job failed: {cond.get('reason', '')} {cond.get('message', '')}"
        return R.TRAINER_JOB_FAILED, message.strip(), False
    return None


def _token_missing(m: _Machine, trainer: list[PodView], rollout: list[PodView]) -> bool:
    """A pod waits for the rollout token Secret, so someone deleted it.

    The operator cannot read Secrets (by design), so a deleted one shows only here, when a pod
    (re)starts. A new Secret holds a new token, and running pods keep the old one: every pod
    must restart to agree on it. So: recreate it and restart the group (counted).
    """
    token = Names(m.obs.name, m.obs.namespace).token_secret
    waiting = next((p for p in [*trainer, *rollout] if p.missing_secret == token), None)
    if waiting is None:
        return False
    m.act(CreateStatic((f"Secret/{token}",)))
    restarting = condition(m.st, C.RESTARTING) or {}
    if m.st.get("phase") == Phase.RESTARTING and restarting.get("reason") == R.TOKEN_SECRET_MISSING:
        return True  # already restarting for it: the new pods will find the new Secret
    message = f"pod {waiting.name} waits for the deleted Secret {token}: recreated with a new token"
    _restart_or_fail(m, R.TOKEN_SECRET_MISSING, message, [p.name for p in rollout])
    return True


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
    m.st["waitingSince"] = m.now  # the new attempt's pods get startupTimeoutSeconds again
    m.st.pop("lastProgressTime", None)
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
        m.st.pop("waitingSince", None)
        _progress_timeout(m)
        return
    waiting = next((f"{p.name}: {p.waiting}" for p in [*rollout, *trainer] if p.waiting), "")
    message = f"{rollout_msg}; {trainer_msg}" + (f"; waiting for {waiting}" if waiting else "")
    if _startup_timeout(m, message):
        return
    stalled = EventType.WARNING if is_true(m.st, C.RUNNING) else None
    m.cond(C.RUNNING, False, R.PODS_NOT_READY, message, stalled)
    if m.st.get("phase") == Phase.RESTARTING:
        m.st["message"] = message
    elif ready or running or any(p.phase == PodPhase.RUNNING for p in rollout):
        m.phase(Phase.INITIALIZING, message)
    else:
        m.phase(Phase.PENDING, message)


# --------------------------------------------------------------------------- timeouts
def _seconds_left(m: _Machine, since_key: str, timeout: int | None) -> float | None:
    """Seconds until ``timeout`` runs out, counted from ``status[since_key]`` (set to now when
    absent); None without a timeout. A later wake-up is requested for it."""
    since = parse_time(m.st.get(since_key))
    if since is None:
        m.st[since_key] = m.now
        since = parse_time(m.now)
    if timeout is None or since is None:
        return None
    remaining = (since - m.obs.now).total_seconds() + timeout
    m.d.requeue(remaining)
    return remaining


def _startup_timeout(m: _Machine, waiting: str) -> bool:
    """Pods not all running and ready within startupTimeoutSeconds of their creation (or the
    restart, or the resume): Failed/StartupTimeout, naming the waiting pod and its reason.

    Failed, not a restart: the new pods would be the same pods and wait for the same reason
    (an image that does not exist, a request no node can serve). A trainer Job suspended by
    Kueue is waiting for its quota: that does not count.
    """
    tj = m.obs.trainer_job or {}
    if (tj.get("spec") or {}).get("suspend"):
        m.st["waitingSince"] = m.now
        return False
    timeout = m.spec.run_policy.startup_timeout_seconds
    remaining = _seconds_left(m, "waitingSince", timeout)
    if remaining is None or remaining > 0:
        return False
    _fail(m, R.STARTUP_TIMEOUT, f"the pods are not all running {timeout}s after they were "
          f"created (runPolicy.startupTimeoutSeconds): {waiting}")  # fmt: skip
    return True


def _progress_timeout(m: _Machine) -> bool:
    """No new step in the trainer's /status within progressTimeoutSeconds while Running: a
    hung trainer; restart the group from its newest checkpoint (counted)."""
    old, new = m.obs.status.get("step"), m.st.get("step")
    if isinstance(new, int) and (not isinstance(old, int) or new > old):
        m.st["lastProgressTime"] = m.now  # progress: the clock starts again
    timeout = m.spec.run_policy.progress_timeout_seconds
    remaining = _seconds_left(m, "lastProgressTime", timeout)
    if remaining is None or remaining > 0:
        return False
    message = (
        f"no new step in the trainer's /status for {timeout}s "
        f"(runPolicy.progressTimeoutSeconds; last step {new if new is not None else 'none'})"
    )
    _restart_or_fail(m, R.PROGRESS_TIMEOUT, message, [])
    return True
