"""The job's state machine as a pure function: what was observed in, what to do out.

:func:`decide` takes an :class:`Observation` (the job's spec and current status, its workload
objects and pods, the trainer's reported progress, the time) and returns a :class:`Decision`:
the new status (phase + metav1-style conditions), the actions to take, the Kubernetes Events
to post and the outcomes to count. It is level-based: the same observation always gives the
same decision, so an operator restart or a repeated reconcile repeats nothing that the status
already records (a restart is counted once because ``status.restarts`` is written before the
old trainer Job is deleted).

Phases: Pending -> Initializing -> Running -> Succeeded | Failed, with Restarting (a trainer or
rollout pod failed; the trainer group restarts from its newest checkpoint) and Suspended.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agpo_api import AGPOJobSpec
from agpo_operator.builders.common import ATTEMPT_LABEL, COMPLETION_INDEX

Obj = dict[str, Any]
TERMINAL = frozenset({"Succeeded", "Failed"})
CONDITION_ORDER = (
    "Created", "RolloutReady", "Running", "Restarting", "Suspended", "Succeeded", "Failed",
    "SpecChangeRefused",
)  # fmt: skip
# Run-policy fields a user may change on a live job; every other spec field is immutable.
MUTABLE_RUN_POLICY = (
    "suspend", "active_deadline_seconds", "ttl_seconds_after_finished", "backoff_limit",
    "clean_pod_policy",
)  # fmt: skip
PROGRESS_FIELDS = {
    "step": int,
    "totalSteps": int,
    "rewardMean": float,
    "completionTokensMean": float,
    "zeroVarianceFraction": float,
    "policyVersion": int,
}


# --------------------------------------------------------------------------- time
def timestamp(t: dt.datetime) -> str:
    """metav1.Time: RFC 3339 in UTC, whole seconds."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


# --------------------------------------------------------------------------- observations
@dataclass(frozen=True)
class PodView:
    """What the decisions need to know of one pod."""

    name: str
    phase: str
    ready: bool = False
    index: int | None = None
    restarts: int = 0
    deleting: bool = False
    problem: str = ""
    waiting: str = ""

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> PodView:
        meta, status = pod.get("metadata", {}), pod.get("status", {}) or {}
        raw_index = (meta.get("annotations") or {}).get(COMPLETION_INDEX) or (
            meta.get("labels") or {}
        ).get(COMPLETION_INDEX)
        containers = status.get("containerStatuses") or []
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        return cls(
            name=meta.get("name", ""),
            phase=status.get("phase") or "Pending",
            ready=ready,
            index=int(str(raw_index)) if str(raw_index or "").isdigit() else None,
            restarts=sum(int(c.get("restartCount") or 0) for c in containers),
            deleting=bool(meta.get("deletionTimestamp")),
            problem=_termination(containers) or status.get("reason") or "",
            waiting=_waiting(status, containers),
        )


def _termination(containers: Iterable[Mapping[str, Any]]) -> str:
    for c in containers:
        for state in (c.get("state") or {}, c.get("lastState") or {}):
            term = state.get("terminated")
            if term and term.get("exitCode", 0) != 0:
                reason = f" ({term['reason']})" if term.get("reason") else ""
                return f"container {c.get('name', '?')} exited with code {term['exitCode']}{reason}"
    return ""


_BENIGN_WAITING = {"ContainerCreating", "PodInitializing"}


def _waiting(status: Mapping[str, Any], containers: Iterable[Mapping[str, Any]]) -> str:
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in _BENIGN_WAITING:
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}".rstrip(": ")
    return ""


def owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Whether ``obj``'s controller is the object with ``uid``."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return uid is not None and any(r.get("uid") == uid and r.get("controller") for r in refs)


def job_condition(job: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return cond  # type: ignore[no-any-return]
    return None


def deleting(obj: Mapping[str, Any] | None) -> bool:
    return bool(obj and obj.get("metadata", {}).get("deletionTimestamp"))


@dataclass(frozen=True)
class Observation:
    """Everything :func:`decide` looks at, gathered by the reconciler."""

    name: str
    namespace: str
    generation: int
    now: dt.datetime
    status: Mapping[str, Any]
    spec: AGPOJobSpec | None
    problems: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    refused_reason: str = "ImmutableField"
    statefulset: Mapping[str, Any] | None = None
    trainer_job: Mapping[str, Any] | None = None
    rollout_pods: tuple[PodView, ...] = ()
    trainer_pods: tuple[PodView, ...] = ()
    progress: Mapping[str, Any] | None = None


# --------------------------------------------------------------------------- decisions
class Act(StrEnum):
    """What the reconciler can be asked to do (it maps each to one API operation)."""

    CREATE_STATIC = "create_static"
    CREATE_ROLLOUT = "create_rollout"
    CREATE_TRAINER = "create_trainer"  # arg: attempt
    DELETE_ROLLOUT = "delete_rollout"
    DELETE_TRAINER = "delete_trainer"
    SUSPEND_TRAINER = "suspend_trainer"
    DELETE_PODS = "delete_pods"  # arg: pod names
    DELETE_JOB = "delete_job"


CREATES = frozenset({Act.CREATE_STATIC, Act.CREATE_ROLLOUT, Act.CREATE_TRAINER})


@dataclass(frozen=True)
class Action:
    act: Act
    arg: Any = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    status: Obj
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    counters: list[tuple[str, str]] = field(default_factory=list)  # (outcome, reason)
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue_after = (
            seconds if self.requeue_after is None else min(self.requeue_after, seconds)
        )


# --------------------------------------------------------------------------- conditions
def condition(status: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            return cond  # type: ignore[no-any-return]
    return None


def is_true(status: Mapping[str, Any], ctype: str) -> bool:
    cond = condition(status, ctype)
    return bool(cond and cond.get("status") == "True")


class _Machine:
    """Mutable working state of one decision (status edits + actions + events)."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.now = timestamp(obs.now)
        self.d = Decision(status=copy.deepcopy(dict(obs.status)))
        self.st = self.d.status

    # -- status edits
    def cond(self, ctype: str, status: bool, reason: str, message: str,
             event: str | None = None) -> None:  # fmt: skip
        """Set a condition (metav1 semantics); post ``event`` when its status or reason changes."""
        value = "True" if status else "False"
        conds: list[Obj] = [dict(c) for c in self.st.get("conditions") or []]
        old = next((c for c in conds if c.get("type") == ctype), None)
        new = {
            "type": ctype,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": self.now,
            "observedGeneration": self.obs.generation,
        }
        if old is not None and old.get("status") == value:
            new["lastTransitionTime"] = old.get("lastTransitionTime", self.now)
        changed = old is None or old.get("status") != value or old.get("reason") != reason
        conds = [c for c in conds if c.get("type") != ctype] + [new]
        rank = {t: i for i, t in enumerate(CONDITION_ORDER)}
        self.st["conditions"] = sorted(conds, key=lambda c: rank.get(c["type"], len(rank)))
        if event and changed and (old is not None or status):
            self.d.events.append(Event(event, reason, message))

    def phase(self, phase: str, message: str | None = None) -> None:
        self.st["phase"] = phase
        if message is not None:
            self.st["message"] = message

    @property
    def spec(self) -> AGPOJobSpec:
        assert self.obs.spec is not None
        return self.obs.spec

    def act(self, act: Act, arg: Any = None) -> None:
        self.d.actions.append(Action(act, arg))

    def finish(self) -> Decision:
        self.st["observedGeneration"] = self.obs.generation
        return self.d


def _initial_conditions(m: _Machine) -> None:
    for ctype, reason, message in (
        ("RolloutReady", "RolloutPending", "the vLLM servers are starting"),
        ("Running", "Pending", "the trainer group has not started"),
        ("Restarting", "NoRestart", "no restart so far"),
        ("Suspended", "NotSuspended", "the job is not suspended"),
        ("Succeeded", "NotFinished", "training has not finished"),
        ("Failed", "NotFailed", "the job has not failed"),
    ):
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
    created = is_true(m.st, "Created")
    failed_cond = condition(m.st, "Failed")
    if (
        phase == "Failed"
        and not created
        and failed_cond
        and failed_cond.get("reason") == "InvalidSpec"
    ):
        # The spec was invalid before anything was created and is valid now: start over.
        m.cond("Failed", False, "SpecCorrected", "the spec is valid now", "Normal")
        phase = None
    if phase in TERMINAL:
        _finished(m)
        return m.finish()
    if not created:
        _create(m)
        return m.finish()
    rp = m.spec.run_policy
    if rp.suspend:
        _suspend(m)
        return m.finish()
    if phase == "Suspended":
        _resume(m)
    if _deadline(m):
        return m.finish()
    _progress(m)
    if _workloads(m):
        _pods(m)
    return m.finish()


def _invalid(m: _Machine) -> Decision:
    """A spec the model refuses (it passed the CRD schema): Failed/InvalidSpec, no children."""
    message = "invalid spec: " + "; ".join(m.obs.problems)
    if m.st.get("phase") != "Failed" or not is_true(m.st, "Failed"):
        m.d.counters.append(("failed", "InvalidSpec"))
    m.cond("Created", False, "InvalidSpec", "no child objects are created for an invalid spec")
    _initial_conditions(m)
    m.cond("Failed", True, "InvalidSpec", message, "Warning")
    m.phase("Failed", message)
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
        m.cond("SpecChangeRefused", True, m.obs.refused_reason, message, "Warning")
    elif is_true(m.st, "SpecChangeRefused"):
        m.cond(
            "SpecChangeRefused", False, "SpecAccepted", "the spec matches the running job", "Normal"
        )


def _create(m: _Machine) -> None:
    spec = m.spec
    m.act(Act.CREATE_STATIC)
    m.cond("Created", True, "ChildrenCreated", "the job's child objects are created", "Normal")
    _initial_conditions(m)
    m.st["restarts"] = 0
    m.st["totalSteps"] = spec.training.steps
    m.d.counters.append(("created", ""))
    if spec.run_policy.suspend:
        m.cond("Suspended", True, "Suspended", "created suspended: no pods run", "Normal")
        m.phase("Suspended", "suspended")
        return
    m.act(Act.CREATE_ROLLOUT)
    m.act(Act.CREATE_TRAINER, 0)
    m.st["startTime"] = m.now
    m.phase("Pending", "waiting for the rollout and trainer pods")
    _deadline_requeue(m)


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
        m.act(Act.DELETE_ROLLOUT)
    if tj is None or deleting(tj):
        return
    if policy == "All":
        m.act(Act.DELETE_TRAINER)
    elif not (
        job_condition(tj, "Complete")
        or job_condition(tj, "Failed")
        or (tj.get("spec") or {}).get("suspend")
    ):
        m.act(Act.SUSPEND_TRAINER)


def _finished(m: _Machine) -> None:
    _cleanup(m)
    ttl = m.spec.run_policy.ttl_seconds_after_finished
    done = parse_time(m.st.get("completionTime"))
    if ttl is None or done is None:
        return
    remaining = (done - m.obs.now).total_seconds() + ttl
    if remaining <= 0:
        m.act(Act.DELETE_JOB)
        m.d.events.append(
            Event("Normal", "TTLExpired", f"deleting the job {ttl}s after it finished")
        )
    else:
        m.d.requeue(remaining)


def _stop_conditions(m: _Machine, reason: str, message: str) -> None:
    m.cond("Running", False, reason, message)
    m.cond("RolloutReady", False, "RolloutStopped", "the vLLM servers are stopped")
    if is_true(m.st, "Restarting"):
        m.cond("Restarting", False, reason, message)


def _fail(m: _Machine, reason: str, message: str) -> None:
    m.cond("Failed", True, reason, message, "Warning")
    _stop_conditions(m, "Failed", message)
    m.phase("Failed", message)
    m.st["completionTime"] = m.now
    m.d.counters.append(("failed", reason))
    _finished(m)


def _succeed(m: _Machine) -> None:
    message = "training finished: every trainer pod succeeded"
    m.cond("Succeeded", True, "TrainingSucceeded", message, "Normal")
    _stop_conditions(m, "Succeeded", message)
    m.phase("Succeeded", message)
    m.st["completionTime"] = m.now
    m.d.counters.append(("succeeded", ""))
    _finished(m)


def _suspend(m: _Machine) -> None:
    sts, tj = m.obs.statefulset, m.obs.trainer_job
    if sts is not None and not deleting(sts):
        m.act(Act.DELETE_ROLLOUT)
    if tj is not None and not deleting(tj):
        m.act(Act.DELETE_TRAINER)
    message = "spec.runPolicy.suspend is true: pods are removed, checkpoints are kept"
    m.cond("Suspended", True, "Suspended", message, "Normal")
    _stop_conditions(m, "Suspended", message)
    m.phase("Suspended", message)


def _resume(m: _Machine) -> None:
    message = "resumed: pods are recreated; training continues from the newest checkpoint"
    m.cond("Suspended", False, "Resumed", message, "Normal")
    m.st["startTime"] = m.now  # the deadline counts running time since the last resume
    m.phase("Pending", message)


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
    _fail(m, "DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds ({ads}s)")
    return True


def _progress(m: _Machine) -> None:
    for key, kind in PROGRESS_FIELDS.items():
        value = (m.obs.progress or {}).get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        m.st[key] = kind(value)


def _workloads(m: _Machine) -> bool:
    """Make sure this attempt's StatefulSet and trainer Job exist; True when pods can be read."""
    attempt = int(m.st.get("restarts") or 0)
    if m.obs.statefulset is None:
        m.act(Act.CREATE_ROLLOUT)
    tj = m.obs.trainer_job
    if tj is None:
        m.act(Act.CREATE_TRAINER, attempt)
        return False
    if deleting(tj):
        return False  # the previous attempt's pods are still going away
    labels = tj.get("metadata", {}).get("labels") or {}
    if labels.get(ATTEMPT_LABEL) != str(attempt):
        m.act(Act.DELETE_TRAINER)  # left over from before a restart
        return False
    return True


def _pods(m: _Machine) -> None:
    spec, obs = m.spec, m.obs
    trainer = [p for p in obs.trainer_pods if not p.deleting]
    rollout = [p for p in obs.rollout_pods if not p.deleting]
    done = {p.index for p in trainer if p.phase == "Succeeded"}
    if job_condition(obs.trainer_job, "Complete") or len(done) >= spec.trainer.nodes:
        _succeed(m)
        return
    failure = _trainer_failure(obs.trainer_job, trainer)
    broken = [p for p in rollout if p.phase == "Failed" or p.restarts > 0]
    restarting = m.st.get("phase") == "Restarting"
    if failure is None and broken and not restarting:
        p = broken[0]
        failure = ("RolloutPodFailed", f"rollout pod {p.name} failed: {p.problem or p.phase}")
    if failure is not None:
        _restart_or_fail(m, *failure, [p.name for p in broken])
        return
    if broken:  # a rollout pod died during a restart: replace it, count nothing twice
        m.act(Act.DELETE_PODS, tuple(p.name for p in broken))
    _readiness(m, trainer, rollout)


def _trainer_failure(job: Mapping[str, Any] | None, pods: list[PodView]) -> tuple[str, str] | None:
    failed = [p for p in pods if p.phase == "Failed"]
    if failed:
        p = failed[0]
        where = f" (rank {p.index})" if p.index is not None else ""
        return "TrainerPodFailed", f"trainer pod {p.name}{where} failed: {p.problem or 'Failed'}"
    cond = job_condition(job, "Failed")
    if cond is not None:
        return (
            "TrainerJobFailed",
            f"trainer Job failed: {cond.get('reason', '')} {cond.get('message', '')}".strip(),
        )
    return None


def _restart_or_fail(m: _Machine, reason: str, message: str, broken: list[str]) -> None:
    restarts = int(m.st.get("restarts") or 0)
    limit = m.spec.run_policy.backoff_limit
    if restarts >= limit:
        _fail(m, "BackoffLimitExceeded", f"{message}; backoffLimit {limit} reached")
        return
    restarts += 1
    m.st["restarts"] = restarts
    text = (
        f"{message}; restarting the trainer group from its newest checkpoint ({restarts}/{limit})"
    )
    m.cond("Restarting", True, reason, text, "Warning")
    m.cond("Running", False, "Restarting", text)
    m.phase("Restarting", text)
    m.d.counters.append(("restarted", reason))
    m.act(Act.DELETE_TRAINER)
    if broken:
        m.act(Act.DELETE_PODS, tuple(broken))


def _readiness(m: _Machine, trainer: list[PodView], rollout: list[PodView]) -> None:
    spec = m.spec
    replicas, nodes = spec.rollout.replicas, spec.trainer.nodes
    ready = sum(p.ready and p.phase == "Running" for p in rollout)
    running = sum(p.phase == "Running" for p in trainer)
    rollout_msg = f"{ready}/{replicas} vLLM servers ready"
    if ready >= replicas:
        m.cond("RolloutReady", True, "AllReplicasReady", rollout_msg, "Normal")
    else:
        was_ready = is_true(m.st, "RolloutReady")
        m.cond(
            "RolloutReady", False, "ReplicasNotReady", rollout_msg, "Warning" if was_ready else None
        )
    trainer_msg = f"{running}/{nodes} trainer pods running"
    if ready >= replicas and running >= nodes:
        m.cond("Running", True, "TrainerRunning", f"{trainer_msg}; {rollout_msg}", "Normal")
        if is_true(m.st, "Restarting"):
            text = f"restart {m.st.get('restarts')} is running (resumed from the newest checkpoint)"
            m.cond("Restarting", False, "Recovered", text, "Normal")
        step, total = m.st.get("step"), m.st.get("totalSteps")
        m.phase("Running", f"training: step {step}/{total}" if step is not None else "training")
        return
    waiting = next((f"{p.name}: {p.waiting}" for p in [*rollout, *trainer] if p.waiting), "")
    message = f"{rollout_msg}; {trainer_msg}" + (f"; waiting for {waiting}" if waiting else "")
    was_running = is_true(m.st, "Running")
    m.cond("Running", False, "PodsNotReady", message, "Warning" if was_running else None)
    if m.st.get("phase") == "Restarting":
        m.st["message"] = message
    elif ready or running or any(p.phase == "Running" for p in rollout):
        m.phase("Initializing", message)
    else:
        m.phase("Pending", message)


# --------------------------------------------------------------------------- spec changes
def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def immutable_changes(applied: AGPOJobSpec, current: AGPOJobSpec) -> list[str]:
    """One line per immutable field that differs between the running and the requested spec."""

    def without_mutable(spec: AGPOJobSpec) -> Obj:
        data = spec.to_dict()
        run_policy = data.get("runPolicy", {})
        for name in MUTABLE_RUN_POLICY:
            alias = AGPOJobSpec.model_fields["run_policy"].annotation.model_fields[name].alias  # type: ignore[union-attr]
            run_policy.pop(alias or name, None)
        return data

    old = _leaves(without_mutable(applied), "spec")
    new = _leaves(without_mutable(current), "spec")
    out = []
    for path in sorted(set(old) | set(new)):
        if old.get(path) != new.get(path):
            out.append(f"{path} cannot change on a live job (running: {old.get(path)!r}, "
                       f"requested: {new.get(path)!r})")  # fmt: skip
    return out


def effective_spec(applied: AGPOJobSpec, current: AGPOJobSpec) -> AGPOJobSpec:
    """The running spec with the requested values of the mutable run-policy fields."""
    updates = {name: getattr(current.run_policy, name) for name in MUTABLE_RUN_POLICY}
    run_policy = applied.run_policy.model_copy(update=updates)
    return applied.model_copy(update={"run_policy": run_policy})
