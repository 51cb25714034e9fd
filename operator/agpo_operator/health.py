"""The running job's health: its pods' failures, restarts, readiness and timeouts.

:func:`check_pods` judges the pods of the current attempt. Failures are classified by the
pods' termination messages (:mod:`agpo_api.termination`): permanent ones fail the job at once,
transient trainer failures restart the trainer group from its newest checkpoint within
backoffLimit. A vLLM server that fails transiently once the group has run is only replaced:
the trainer treats the servers as a pool (it drops a dead one and joins its replacement at a
step boundary), and fails by itself, a counted restart, when no server serves. A deleted
rollout token Secret is recreated and restarts the group. Otherwise the conditions say how
many vLLM servers are ready and trainer pods running. The run policy's timeouts count from
times kept in the status (``waitingSince``, ``lastProgressTime``), so they are level-based
too: startupTimeoutSeconds fails the job, progressTimeoutSeconds restarts the group.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agpo_api.termination import Termination
from agpo_api.vocabulary import ConditionType, EventType, Phase, Reason
from agpo_operator.actions import CreateStatic, DeletePods, DeleteTrainer, Event, Outcome
from agpo_operator.builders.common import Names
from agpo_operator.builders.security import TOKEN_SECRET
from agpo_operator.conditions import condition, is_true, parse_time
from agpo_operator.lifecycle import fail, succeed
from agpo_operator.machine import Machine
from agpo_operator.observe import JobCondition, PodPhase, PodView, job_condition
from agpo_operator.pool import scaling_up

#: The PodScheduled reason of a pod that still has a scheduling gate (Kueue's
#: ``kueue.x-k8s.io/admission`` until its pod group is admitted).
SCHEDULING_GATED = "SchedulingGated"

C, R = ConditionType, Reason


def check_pods(m: Machine) -> None:
    """Succeed, fail, restart or update the readiness conditions, from this attempt's pods."""
    spec, obs = m.spec, m.obs
    trainer = [p for p in obs.trainer_pods if not p.deleting]
    rollout = [p for p in obs.rollout_pods if not p.deleting]
    done = {p.index for p in trainer if p.phase == PodPhase.SUCCEEDED}
    if job_condition(obs.trainer_job, JobCondition.COMPLETE) or len(done) >= spec.trainer.nodes:
        succeed(m, trainer)
        return
    if _token_missing(m, trainer, rollout):
        return
    broken = [p for p in rollout if p.phase == PodPhase.FAILED or p.restarts > 0]
    failure = _trainer_failure(obs.trainer_job, trainer) or _rollout_failure(m, broken)
    if failure is not None:
        reason, message, permanent = failure
        if permanent:
            fail(m, R.PERMANENT_FAILURE, f"{message}; not retried: the spec or the data must "
                 "change (a permanent failure spends no backoffLimit)")  # fmt: skip
        else:
            _restart_or_fail(m, reason, message, [p.name for p in broken])
        return
    if broken:
        _replace(m, broken)
    _readiness(m, trainer, [p for p in rollout if p not in broken])


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


def _rollout_message(p: PodView) -> str:
    # A restarted container that left no exit code still says what happened to it.
    cause = p.problem or (f"restarted {p.restarts} time(s)" if p.restarts else p.phase)
    return f"rollout pod {p.name} failed: {cause}"


def _has_run(m: Machine) -> bool:
    """This attempt's trainer group has been Running: it serves from the pool since then, even
    while no server is ready (the phase then says Initializing). ``lastProgressTime`` is set
    when the group first runs and cleared by a restart or a suspend."""
    return m.st.get("phase") == Phase.RUNNING or "lastProgressTime" in m.st


def _rollout_failure(m: Machine, broken: list[PodView]) -> tuple[Reason, str, bool] | None:
    """A broken vLLM server that fails the job or restarts the trainer group: (reason,
    message, permanent). A permanent failure in any phase: a replacement would fail the same
    way. A transient one only before this attempt's group has run: nothing trained is lost,
    and a server that crashes while the job starts usually crashes again, which backoffLimit
    ends sooner than startupTimeoutSeconds. Once the group runs the trainer drops the server
    and joins its replacement (:func:`_replace`); during a restart the pod is replaced too."""
    permanent = next((p for p in broken if _permanent(p.termination)), None)
    if permanent is not None:
        return R.ROLLOUT_POD_FAILED, _rollout_message(permanent), True
    if not broken or m.st.get("phase") == Phase.RESTARTING or _has_run(m):
        return None
    return R.ROLLOUT_POD_FAILED, _rollout_message(broken[0]), False


def _replace(m: Machine, broken: list[PodView]) -> None:
    """Delete broken vLLM pods; their StatefulSet recreates them and the trainer joins the new
    ones at a step boundary, pushing them the current weights first. No restart, no backoffLimit
    spent: the trainer itself fails (a counted restart) when no server serves for its rollout
    timeout. Deleting, not waiting for the kubelet's restart, makes each failure seen once: the
    new pod's restart count starts at 0."""
    m.act(DeletePods(tuple(p.name for p in broken)))
    if m.st.get("phase") == Phase.RESTARTING:
        return  # quietly, as before: the restart in progress said and counted why
    for p in broken:
        message = (
            f"{_rollout_message(p)}; replaced (its StatefulSet recreates it): the trainer goes "
            "on with the other servers and joins the new one at a step boundary, no restart"
        )
        m.d.events.append(Event(EventType.WARNING, R.ROLLOUT_POD_FAILED, message))
        m.count(Outcome.REPLACED, R.ROLLOUT_POD_FAILED)


def _token_missing(m: Machine, trainer: list[PodView], rollout: list[PodView]) -> bool:
    """A pod waits for the rollout token Secret, so someone deleted it.

    The operator cannot read Secrets (by design), so a deleted one shows only here, when a pod
    (re)starts. A new Secret holds a new token, and running pods keep the old one: every pod
    must restart to agree on it. So: recreate it and restart the group (counted).
    """
    n = Names(m.obs.name, m.obs.namespace)
    token = TOKEN_SECRET.name(n)
    waiting = next((p for p in [*trainer, *rollout] if p.missing_secret == token), None)
    if waiting is None:
        return False
    m.act(CreateStatic((TOKEN_SECRET.key(n),)))
    restarting = condition(m.st, C.RESTARTING) or {}
    if m.st.get("phase") == Phase.RESTARTING and restarting.get("reason") == R.TOKEN_SECRET_MISSING:
        return True  # already restarting for it: the new pods will find the new Secret
    message = f"pod {waiting.name} waits for the deleted Secret {token}: recreated with a new token"
    _restart_or_fail(m, R.TOKEN_SECRET_MISSING, message, [p.name for p in rollout])
    return True


def _restart_or_fail(m: Machine, reason: Reason, message: str, broken: list[str]) -> None:
    restarts = int(m.st.get("restarts") or 0)
    limit = m.spec.run_policy.backoff_limit
    if restarts >= limit:
        fail(m, R.BACKOFF_LIMIT_EXCEEDED, f"{message}; backoffLimit {limit} reached")
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


def _readiness(m: Machine, trainer: list[PodView], rollout: list[PodView]) -> None:
    spec = m.spec
    replicas, nodes = spec.rollout.replicas, spec.trainer.nodes
    ready = sum(p.ready and p.phase == PodPhase.RUNNING for p in rollout)
    running = sum(p.phase == PodPhase.RUNNING for p in trainer)
    rollout_msg = f"{ready}/{replicas} vLLM servers ready"
    if ready >= replicas:
        m.cond(C.ROLLOUT_READY, True, R.ALL_REPLICAS_READY, rollout_msg, EventType.NORMAL)
    else:
        # A ready server lost is worth a Warning; new servers of a larger pool are not.
        lost = is_true(m.st, C.ROLLOUT_READY) and not scaling_up(m)
        m.cond(C.ROLLOUT_READY, False, R.REPLICAS_NOT_READY, rollout_msg,
               EventType.WARNING if lost else None)  # fmt: skip
    trainer_msg = f"{running}/{nodes} trainer pods running"
    # The whole pool to start; then the job runs while one server serves: the trainer sends
    # prompts only to the servers that serve and joins the others when they are ready (after
    # a scale-up, or pods waiting for room), so neither stalls training nor counts towards
    # startupTimeoutSeconds.
    serving = ready >= replicas or (ready > 0 and m.st.get("phase") == Phase.RUNNING)
    if serving and running >= nodes:
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
def _seconds_left(m: Machine, since_key: str, timeout: int | None) -> float | None:
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


def _kueue_gated(m: Machine) -> bool:
    """Some pod of a Kueue pod group still has its scheduling gate (not admitted yet)."""
    gang = m.spec.run_policy.gang
    if gang is None or gang.mode != "kueue":
        return False
    pods = (*m.obs.trainer_pods, *m.obs.rollout_pods)
    return any(p.waiting.startswith(SCHEDULING_GATED) for p in pods)


def _startup_timeout(m: Machine, waiting: str) -> bool:
    """Pods not all running and ready within startupTimeoutSeconds of their creation (or the
    restart, or the resume): Failed/StartupTimeout, naming the waiting pod and its reason.

    Failed, not a restart: the new pods would be the same pods and wait for the same reason
    (an image that does not exist, a request no node can serve). A trainer Job suspended by
    Kueue is waiting for its quota: that does not count, and neither do pods that Kueue's
    admission gate holds (``runPolicy.gang.mode: kueue``: the job's pod group waits for quota).
    """
    tj = m.obs.trainer_job or {}
    if (tj.get("spec") or {}).get("suspend") or _kueue_gated(m):
        m.st["waitingSince"] = m.now
        return False
    timeout = m.spec.run_policy.startup_timeout_seconds
    remaining = _seconds_left(m, "waitingSince", timeout)
    if remaining is None or remaining > 0:
        return False
    fail(m, R.STARTUP_TIMEOUT, f"the pods are not all running {timeout}s after they were "
         f"created (runPolicy.startupTimeoutSeconds): {waiting}")  # fmt: skip
    return True


def _progress_timeout(m: Machine) -> bool:
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
