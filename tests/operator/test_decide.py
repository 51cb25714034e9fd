"""The state machine (agpo_operator.decide.decide) as a pure function: observation -> decision."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from agpo_api import AGPOJobSpec, parse_job
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
    SuspendTrainer,
)
from agpo_operator.decide import decide
from agpo_operator.observe import Observation, PodView

from operator_support import sample

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def spec(**changes: Any) -> AGPOJobSpec:
    manifest = sample(**changes)
    manifest["metadata"] = {"name": "j"}
    return parse_job(manifest).spec


def created(s: AGPOJobSpec | None = None, at: dt.datetime = T0, **status: Any) -> dict[str, Any]:
    """The status right after the children were created."""
    d = decide(Observation("j", "ns", 1, at, {}, s or spec()))
    return {**d.status, **status}


def sts(uid: str = "sts-uid") -> dict[str, Any]:
    return {"metadata": {"name": "j-rollout", "uid": uid}}


def tj(attempt: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "j-trainer",
            "uid": "job-uid",
            "labels": {"agpo.dev/attempt": str(attempt)},
        },
        **extra,
    }


def observe(status: dict[str, Any], s: AGPOJobSpec | None = None, *, now: dt.datetime = T0,
            generation: int = 1, **children: Any) -> Observation:  # fmt: skip
    base = {"statefulset": sts(), "trainer_job": tj(int(status.get("restarts") or 0))}
    base.update(children)
    return Observation("j", "ns", generation, now, status, s or spec(), **base)


def running_pods() -> dict[str, Any]:
    return {
        "rollout_pods": (PodView("j-rollout-0", "Running", ready=True),),
        "trainer_pods": (PodView("j-trainer-0-x", "Running", index=0),),
    }


def cond(d: Decision, ctype: str) -> dict[str, Any]:
    return next(c for c in d.status["conditions"] if c["type"] == ctype)


def acts(d: Decision) -> list[type[Action]]:
    return [type(a) for a in d.actions]


def test_first_decision_creates_everything_and_initialises_every_condition() -> None:
    d = decide(Observation("j", "ns", 1, T0, {}, spec()))
    assert d.actions == [
        CreateStatic(),
        CreateRollout(),
        CreateTrainer(0),
    ]
    assert d.status["phase"] == "Pending" and d.status["restarts"] == 0
    assert d.status["startTime"] == "2026-01-01T12:00:00Z"
    assert [c["type"] for c in d.status["conditions"]] == [
        "Created", "RolloutReady", "Running", "Restarting", "Suspended", "Succeeded", "Failed"
    ]  # fmt: skip
    assert cond(d, "Created")["status"] == "True"
    assert all(c["observedGeneration"] == 1 for c in d.status["conditions"])
    assert [e.reason for e in d.events] == ["ChildrenCreated"]
    assert d.counters == [("created", "")]


def test_invalid_spec_fails_once_and_creates_nothing() -> None:
    obs = Observation("j", "ns", 1, T0, {}, None, problems=("spec.training.warmupSteps: too big",))
    d = decide(obs)
    assert d.actions == [] and d.status["phase"] == "Failed"
    assert cond(d, "Failed")["reason"] == "InvalidSpec"
    assert "spec.training.warmupSteps" in cond(d, "Failed")["message"]
    assert cond(d, "Created")["status"] == "False"
    assert d.counters == [("failed", "InvalidSpec")] and [e.type for e in d.events] == ["Warning"]
    again = decide(dataclasses.replace(obs, status=d.status, now=T0 + dt.timedelta(seconds=5)))
    assert again.counters == [] and again.events == [] and again.status == d.status


def test_a_corrected_spec_starts_the_job() -> None:
    failed = decide(Observation("j", "ns", 1, T0, {}, None, problems=("x",))).status
    d = decide(Observation("j", "ns", 2, T0, failed, spec()))
    assert CreateStatic in acts(d) and d.status["phase"] == "Pending"
    assert cond(d, "Failed")["status"] == "False" and cond(d, "Failed")["reason"] == "SpecCorrected"


def test_phases_follow_the_pods() -> None:
    status = created()
    d = decide(observe(status))
    assert d.status["phase"] == "Pending" and d.actions == []
    d = decide(observe(status, rollout_pods=(PodView("j-rollout-0", "Running", ready=False),)))
    assert d.status["phase"] == "Initializing" and cond(d, "RolloutReady")["status"] == "False"
    d = decide(observe(status, **running_pods()))
    assert d.status["phase"] == "Running"
    assert cond(d, "RolloutReady")["status"] == cond(d, "Running")["status"] == "True"
    assert {e.reason for e in d.events} == {"AllReplicasReady", "TrainerRunning"}
    later = decide(observe(d.status, now=T0 + dt.timedelta(minutes=1), **running_pods()))
    assert later.events == [] and later.status["conditions"] == d.status["conditions"]


def test_progress_is_copied_with_the_right_types() -> None:
    progress = {"step": 5, "totalSteps": 30, "rewardMean": 1, "zeroVarianceFraction": 0.25,
                "completionTokensMean": 12.5, "policyVersion": 5, "phase": "x", "junk": [1]}  # fmt: skip
    d = decide(dataclasses.replace(observe(created(), **running_pods()), progress=progress))
    assert d.status["step"] == 5 and d.status["rewardMean"] == 1.0
    assert isinstance(d.status["rewardMean"], float)
    assert "junk" not in d.status and d.status["message"] == "training: step 5/30"


def test_a_failed_trainer_pod_restarts_the_group_and_counts_once() -> None:
    status = decide(observe(created(), **running_pods())).status
    pods = {
        "rollout_pods": (PodView("j-rollout-0", "Running", ready=True),),
        "trainer_pods": (
            PodView(
                "j-trainer-0-x", "Failed", index=0, problem="container trainer exited with code 1"
            ),
        ),
    }
    d = decide(observe(status, **pods))
    assert d.status["phase"] == "Restarting" and d.status["restarts"] == 1
    assert cond(d, "Restarting")["reason"] == "TrainerPodFailed"
    assert (
        "rank 0" in cond(d, "Restarting")["message"]
        and "code 1" in cond(d, "Restarting")["message"]
    )
    assert acts(d) == [DeleteTrainer] and d.counters == [("restarted", "TrainerPodFailed")]
    # The old Job (attempt 0) is still listed: deleted again, nothing counted twice.
    again = decide(observe(d.status, trainer_job=tj(0), **pods))
    assert acts(again) == [DeleteTrainer] and again.counters == [] and again.status["restarts"] == 1
    # Gone: the next attempt is created.
    nxt = decide(observe(d.status, trainer_job=None))
    assert nxt.actions == [CreateTrainer(1)]
    # Its pods run: Running again, Restarting -> False (Recovered).
    ok = decide(observe(d.status, trainer_job=tj(1), **running_pods()))
    assert ok.status["phase"] == "Running" and cond(ok, "Restarting")["reason"] == "Recovered"


def server(name: str, message: str, *, restarts: int = 0) -> PodView:
    """A vLLM pod whose container ended with ``message``: Failed, or restarted by the kubelet
    (``restarts``: it runs again, its last state holds the exit)."""
    terminated = {"exitCode": 137, "reason": "Error", "message": message}
    state = (
        {"state": {"running": {}}, "lastState": {"terminated": terminated}}
        if restarts
        else {"state": {"terminated": terminated}}
    )
    return PodView.of({
        "metadata": {"name": name},
        "status": {"phase": "Running" if restarts else "Failed",
                   "containerStatuses": [{"name": "vllm", "restartCount": restarts, **state}]},
    })  # fmt: skip


def pool_of_two() -> tuple[AGPOJobSpec, dict[str, Any]]:
    """A job with two vLLM servers, Running."""
    s = spec(rollout__replicas=2)
    pods = {"rollout_pods": (PodView("j-rollout-0", "Running", ready=True),
                             PodView("j-rollout-1", "Running", ready=True)),
            "trainer_pods": (PodView("j-trainer-0-x", "Running", index=0),)}  # fmt: skip
    status = decide(observe(created(s), s, **pods)).status
    assert status["phase"] == "Running"
    return s, status


@pytest.mark.parametrize("restarts", [0, 1], ids=["failed", "restarted"])
def test_a_vllm_server_failing_while_the_job_runs_is_replaced_and_the_trainer_goes_on(
    restarts: int,
) -> None:
    s, status = pool_of_two()
    broken = server("j-rollout-1", "transient: CUDA error: an illegal memory access",
                    restarts=restarts)  # fmt: skip
    pods = {"rollout_pods": (PodView("j-rollout-0", "Running", ready=True), broken),
            "trainer_pods": (PodView("j-trainer-0-x", "Running", index=0),)}  # fmt: skip
    d = decide(observe(status, s, **pods))
    assert d.actions == [DeletePods(("j-rollout-1",))]  # the trainer Job is not touched
    assert d.status["phase"] == "Running" and d.status["restarts"] == 0
    assert cond(d, "Restarting")["reason"] == "NoRestart"
    assert d.counters == [("replaced", "RolloutPodFailed")]
    warnings = [e for e in d.events if e.reason == "RolloutPodFailed"]
    assert len(warnings) == 1 and warnings[0].type == "Warning"
    message = warnings[0].message
    assert message.startswith("rollout pod j-rollout-1 failed: container vllm exited with code "
                              "137 (Error): transient: CUDA error: an illegal memory access")  # fmt: skip
    assert "the trainer goes on" in message and "\n" not in message
    # The pod being replaced is no ready server any more: one of two serves.
    assert cond(d, "RolloutReady")["message"] == "1/2 vLLM servers ready"
    # Seen again while it goes away: nothing more is done, said or counted.
    going = dataclasses.replace(broken, deleting=True)
    again = decide(
        observe(d.status, s, **{**pods, "rollout_pods": (pods["rollout_pods"][0], going)})
    )
    assert again.actions == [] and again.counters == [] and again.status["restarts"] == 0
    assert [e for e in again.events if e.reason == "RolloutPodFailed"] == []


def test_the_only_server_failing_after_the_job_ran_is_replaced_again_and_again() -> None:
    """With one server the job waits (Initializing: none serves) while its replacement loads;
    a replacement that fails then is replaced too: the group has run, so the trainer decides
    (it fails when no server serves for its rollout timeout)."""
    status = decide(observe(created(), **running_pods())).status
    trainer = {"trainer_pods": (PodView("j-trainer-0-x", "Running", index=0),)}
    first = decide(observe(status, rollout_pods=(server("j-rollout-0", "Killed", restarts=1),),
                           **trainer))  # fmt: skip
    assert first.actions == [DeletePods(("j-rollout-0",))] and first.status["restarts"] == 0
    loading = decide(observe(first.status, rollout_pods=(PodView("j-rollout-0", "Pending"),),
                             **trainer))  # fmt: skip
    assert loading.status["phase"] == "Initializing" and loading.actions == []
    again = decide(observe(loading.status, rollout_pods=(server("j-rollout-0", "Killed"),),
                           **trainer))  # fmt: skip
    assert again.actions == [DeletePods(("j-rollout-0",))] and again.status["restarts"] == 0
    assert [e.reason for e in again.events] == ["RolloutPodFailed"]


def test_a_vllm_server_failing_before_the_group_ran_restarts_it_and_is_replaced() -> None:
    """Before the group first runs a failed server counts against backoffLimit, as it did
    before the pool was elastic: a crash loop at start ends there."""
    broken = {
        "rollout_pods": (server("j-rollout-0", "OOMKilled", restarts=1),),
        "trainer_pods": (PodView("j-trainer-0-x", "Running", index=0),),
    }
    d = decide(observe(created(), **broken))
    assert cond(d, "Restarting")["reason"] == "RolloutPodFailed" and d.status["restarts"] == 1
    assert d.actions == [DeleteTrainer(), DeletePods(("j-rollout-0",))]
    # Seen again while restarting: replaced, not counted or said again.
    again = decide(observe(d.status, trainer_job=tj(1), **broken))
    assert again.status["restarts"] == 1 and again.actions == [DeletePods(("j-rollout-0",))]
    assert again.counters == [] and again.events == []


@pytest.mark.parametrize("ran", [True, False], ids=["running", "starting"])
def test_a_permanent_vllm_failure_fails_the_job(ran: bool) -> None:
    s, status = (
        pool_of_two() if ran else (spec(rollout__replicas=2), created(spec(rollout__replicas=2)))
    )
    reason = "model /models/policy cannot load: config.json missing"
    pods = {"rollout_pods": (PodView("j-rollout-0", "Running", ready=True),
                             server("j-rollout-1", f"Traceback ...\npermanent: {reason}")),
            "trainer_pods": (PodView("j-trainer-0-x", "Running", index=0),)}  # fmt: skip
    d = decide(observe(status, s, **pods))
    assert d.status["phase"] == "Failed" and d.status["restarts"] == 0
    failed = cond(d, "Failed")
    assert failed["reason"] == "PermanentFailure"
    assert "rollout pod j-rollout-1" in failed["message"] and reason in failed["message"]
    assert DeletePods not in acts(d) and DeleteTrainer not in acts(d)


def test_the_backoff_limit_turns_a_failure_into_failed() -> None:
    s = spec(runPolicy__backoffLimit=0)
    status = decide(observe(created(s), s, **running_pods())).status
    failed = {"trainer_pods": (PodView("j-trainer-0-x", "Failed", index=0),),
              "rollout_pods": (PodView("j-rollout-0", "Running", ready=True),)}  # fmt: skip
    d = decide(observe(status, s, **failed))
    assert d.status["phase"] == "Failed" and cond(d, "Failed")["reason"] == "BackoffLimitExceeded"
    assert cond(d, "Running")["status"] == "False" and d.status["completionTime"]
    assert d.counters == [("failed", "BackoffLimitExceeded")]
    assert acts(d) == [DeleteRollout, SuspendTrainer]  # cleanPodPolicy Running


def test_a_failed_trainer_job_is_a_failure_too() -> None:
    status = created()
    failed_job = tj(
        0,
        status={"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]},
    )
    d = decide(observe(status, trainer_job=failed_job))
    assert cond(d, "Restarting")["reason"] == "TrainerJobFailed"


def test_success_needs_every_index() -> None:
    s = spec(trainer={"nodes": 2, "procsPerNode": 1, "gpusPerNode": 0})
    status = created(s)
    one = (PodView("a", "Succeeded", index=0), PodView("b", "Running", index=1))
    assert decide(observe(status, s, trainer_pods=one)).status["phase"] != "Succeeded"
    both = (PodView("a", "Succeeded", index=0), PodView("b", "Succeeded", index=1))
    d = decide(observe(status, s, trainer_pods=both))
    assert (
        d.status["phase"] == "Succeeded" and cond(d, "Succeeded")["reason"] == "TrainingSucceeded"
    )
    assert d.counters == [("succeeded", "")]


@pytest.mark.parametrize(
    ("policy", "job_done", "expected"),
    [
        ("All", False, [DeleteRollout, DeleteTrainer]),
        ("Running", False, [DeleteRollout, SuspendTrainer]),
        ("Running", True, [DeleteRollout]),
        ("None", False, []),
    ],
)
def test_clean_pod_policy(policy: str, job_done: bool, expected: list[type[Action]]) -> None:
    s = spec(runPolicy__cleanPodPolicy=policy)
    job = (
        tj(0, status={"conditions": [{"type": "Complete", "status": "True"}]})
        if job_done
        else tj(0)
    )
    d = decide(observe(created(s), s, trainer_job=job,
                       trainer_pods=(PodView("a", "Succeeded", index=0),)))  # fmt: skip
    assert d.status["phase"] == "Succeeded" and acts(d) == expected
    # Once the workloads are gone there is nothing left to clean.
    assert decide(observe(d.status, s, statefulset=None, trainer_job=None)).actions == []


def test_deadline() -> None:
    s = spec(runPolicy__activeDeadlineSeconds=60)
    status = created(s)
    early = decide(observe(status, s, now=T0 + dt.timedelta(seconds=30), **running_pods()))
    assert early.status["phase"] == "Running" and early.requeue_after == pytest.approx(30)
    late = decide(observe(status, s, now=T0 + dt.timedelta(seconds=60), **running_pods()))
    assert late.status["phase"] == "Failed" and cond(late, "Failed")["reason"] == "DeadlineExceeded"
    assert DeleteRollout in acts(late)


def test_ttl_after_finishing() -> None:
    s = spec(runPolicy__ttlSecondsAfterFinished=100)
    done = decide(observe(created(s), s, trainer_pods=(PodView("a", "Succeeded", index=0),))).status
    wait = decide(
        observe(done, s, now=T0 + dt.timedelta(seconds=40), statefulset=None, trainer_job=None)
    )
    assert wait.actions == [] and wait.requeue_after == pytest.approx(60)
    due = decide(
        observe(done, s, now=T0 + dt.timedelta(seconds=100), statefulset=None, trainer_job=None)
    )
    assert due.actions == [DeleteJob()] and due.events[0].reason == "TTLExpired"


def test_suspend_and_resume() -> None:
    status = decide(observe(created(), **running_pods())).status
    s = spec(runPolicy__suspend=True)
    d = decide(observe(status, s, generation=2, **running_pods()))
    assert d.status["phase"] == "Suspended" and acts(d) == [DeleteRollout, DeleteTrainer]
    assert cond(d, "Suspended")["status"] == "True" and cond(d, "Running")["status"] == "False"
    gone = decide(observe(d.status, s, generation=2, statefulset=None, trainer_job=None))
    assert gone.actions == [] and gone.events == []
    later = T0 + dt.timedelta(hours=1)
    r = decide(
        observe(gone.status, spec(), now=later, generation=3, statefulset=None, trainer_job=None)
    )
    assert r.actions == [CreateRollout(), CreateTrainer(0)]
    assert (
        cond(r, "Suspended")["reason"] == "Resumed"
        and r.status["startTime"] == "2026-01-01T13:00:00Z"
    )
    assert r.status["restarts"] == 0


def test_created_suspended_makes_only_the_static_children() -> None:
    d = decide(Observation("j", "ns", 1, T0, {}, spec(runPolicy__suspend=True)))
    assert acts(d) == [CreateStatic] and d.status["phase"] == "Suspended"


def test_refused_changes_set_and_clear_a_condition() -> None:
    status = created()
    refused = dataclasses.replace(
        observe(status, generation=2), refused=("spec.trainer.nodes cannot change",)
    )
    d = decide(refused)
    c = cond(d, "SpecChangeRefused")
    assert (
        c["status"] == "True"
        and c["reason"] == "ImmutableField"
        and "spec.trainer.nodes" in c["message"]
    )
    assert d.status["observedGeneration"] == 2 and [e.type for e in d.events] == ["Warning"]
    ok = decide(observe(d.status, generation=3))
    assert cond(ok, "SpecChangeRefused")["reason"] == "SpecAccepted"


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    first = decide(observe(created(), **running_pods()))
    t = cond(first, "Running")["lastTransitionTime"]
    second = decide(observe(first.status, now=T0 + dt.timedelta(minutes=5), **running_pods()))
    assert cond(second, "Running")["lastTransitionTime"] == t


# --------------------------------------------------------------------------- reliability
def pod_of(pod: dict[str, Any]) -> PodView:
    return PodView.of(pod)


def terminated_pod(name: str, message: str, *, index: int = 0, exit_code: int = 1) -> PodView:
    """A trainer pod whose container terminated with ``message`` (what the kubelet reports)."""
    return PodView.of({
        "metadata": {"name": name, "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "status": {"phase": "Failed" if exit_code else "Succeeded", "containerStatuses": [{
            "name": "trainer", "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed",
                                     "message": message}},
        }]},
    })  # fmt: skip


def waiting_pod(name: str, reason: str, message: str, **kw: Any) -> PodView:
    return PodView.of({
        "metadata": {"name": name, **kw},
        "status": {"phase": "Pending", "containerStatuses": [{
            "name": "c", "state": {"waiting": {"reason": reason, "message": message}},
        }]},
    })  # fmt: skip


ROLLOUT_OK = (PodView("j-rollout-0", "Running", ready=True),)


def test_a_permanent_failure_fails_at_once_with_the_trainers_reason() -> None:
    """Gap (b): a failure that can never succeed was retried backoffLimit times."""
    status = created()
    pod = terminated_pod("j-trainer-0-x", "loading...\npermanent: dataset row 17 has no 'prompt'")
    d = decide(observe(status, rollout_pods=ROLLOUT_OK, trainer_pods=(pod,)))
    assert d.status["phase"] == "Failed" and d.status["restarts"] == 0
    failed = cond(d, "Failed")
    assert failed["reason"] == "PermanentFailure"
    assert "dataset row 17 has no 'prompt'" in failed["message"]
    assert CreateTrainer not in acts(d) and DeleteTrainer not in acts(d)
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "PermanentFailure")]
    assert d.counters == [("failed", "PermanentFailure")]


def test_a_permanent_failure_wins_over_the_other_ranks_transient_ones() -> None:
    status = created(s := spec(trainer__nodes=2, trainer__procsPerNode=1))
    pods = (
        terminated_pod("a", "transient: peer rank 0 went away", index=1),
        terminated_pod("b", "permanent: reward module 'mymod' does not import", index=0),
    )
    d = decide(observe(status, s, rollout_pods=ROLLOUT_OK, trainer_pods=pods))
    assert cond(d, "Failed")["reason"] == "PermanentFailure"
    assert "mymod" in cond(d, "Failed")["message"]


def test_a_transient_failure_restarts_with_its_reason() -> None:
    status = created()
    pod = terminated_pod("j-trainer-0-x", "transient: CUDA out of memory")
    d = decide(observe(status, rollout_pods=ROLLOUT_OK, trainer_pods=(pod,)))
    assert d.status["phase"] == "Restarting" and d.status["restarts"] == 1
    restarting = cond(d, "Restarting")
    assert restarting["reason"] == "TrainerPodFailed"
    assert "exited with code 1 (Error): transient: CUDA out of memory" in restarting["message"]
    assert [e.reason for e in d.events] == ["TrainerPodFailed"]
    assert "CUDA out of memory" in d.events[0].message


def test_an_unclassified_failure_is_transient_with_the_log_tail() -> None:
    status = created()
    pod = terminated_pod("j-trainer-0-x", "Traceback ...\n  File x\nRuntimeError: NCCL timeout\n")
    d = decide(observe(status, rollout_pods=ROLLOUT_OK, trainer_pods=(pod,)))
    assert d.status["restarts"] == 1
    assert cond(d, "Restarting")["message"].split(";")[0].endswith("RuntimeError: NCCL timeout")


def test_startup_timeout_fails_with_the_waiting_reason() -> None:
    """Gap (c): a job waited in Pending forever (image pull errors, unschedulable pods)."""
    s = spec(runPolicy__startupTimeoutSeconds=600)
    status = created(s)
    assert status["waitingSince"] == "2026-01-01T12:00:00Z"
    pods = {"rollout_pods": (waiting_pod("j-rollout-0", "ImagePullBackOff", "no such image"),),
            "trainer_pods": (PodView("j-trainer-0-x", "Running", index=0),)}  # fmt: skip
    early = decide(observe(status, s, now=T0 + dt.timedelta(seconds=599), **pods))
    assert early.status["phase"] == "Initializing" and early.requeue_after == pytest.approx(1)
    late = decide(observe(early.status, s, now=T0 + dt.timedelta(seconds=601), **pods))
    assert late.status["phase"] == "Failed"
    failed = cond(late, "Failed")
    assert failed["reason"] == "StartupTimeout"
    assert "j-rollout-0: ImagePullBackOff: no such image" in failed["message"]
    assert "startupTimeoutSeconds" in failed["message"]
    assert "waitingSince" not in late.status


def test_the_startup_clock_stops_while_running_and_restarts_with_a_restart() -> None:
    s = spec(runPolicy__startupTimeoutSeconds=60)
    running = decide(observe(created(s), s, **running_pods())).status
    assert running["phase"] == "Running" and "waitingSince" not in running
    later = T0 + dt.timedelta(hours=1)
    pods = {"rollout_pods": ROLLOUT_OK,
            "trainer_pods": (PodView("j-trainer-0-x", "Failed", index=0),)}  # fmt: skip
    restarted = decide(observe(running, s, now=later, **pods)).status
    assert restarted["waitingSince"] == "2026-01-01T13:00:00Z"


def test_a_kueue_suspended_trainer_job_is_not_timed_out() -> None:
    s = spec(runPolicy__startupTimeoutSeconds=60)
    status = created(s)
    queued = tj(0, spec={"suspend": True})
    d = decide(observe(status, s, now=T0 + dt.timedelta(hours=2), trainer_job=queued))
    assert d.status["phase"] == "Pending"
    assert d.status["waitingSince"] == "2026-01-01T14:00:00Z"


@pytest.mark.parametrize(("mode", "timed_out"), [("kueue", False), ("coscheduling", True)])
def test_pods_held_by_kueues_admission_gate_are_not_timed_out(mode: str, timed_out: bool) -> None:
    """A Kueue pod group waits for quota with its pods gated: that is admission, not a pod
    that cannot start. Under coscheduling the same wait is the scheduler's, and counts."""
    s = spec(runPolicy__startupTimeoutSeconds=60, runPolicy__queueName="q",
             runPolicy__gang={"mode": mode})  # fmt: skip
    gated = PodView.of({
        "metadata": {"name": "j-rollout-0"},
        "status": {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "SchedulingGated",
            "message": "Scheduling is blocked due to non-empty scheduling gates",
        }]},
    })  # fmt: skip
    pods = {"rollout_pods": (gated,), "trainer_pods": ()}
    d = decide(observe(created(s), s, now=T0 + dt.timedelta(hours=2), **pods))
    assert (d.status["phase"] == "Failed") is timed_out, d.status
    if not timed_out:
        assert d.status["waitingSince"] == "2026-01-01T14:00:00Z"


def test_progress_timeout_restarts_a_hung_trainer() -> None:
    """Gap (c): a hung trainer was caught only by activeDeadlineSeconds."""
    s = spec(runPolicy__progressTimeoutSeconds=300)
    first = decide(observe(created(s), s, progress={"step": 5}, **running_pods())).status
    assert first["phase"] == "Running" and first["lastProgressTime"] == "2026-01-01T12:00:00Z"
    t1 = T0 + dt.timedelta(seconds=200)
    moved = decide(observe(first, s, now=t1, progress={"step": 6}, **running_pods())).status
    assert moved["lastProgressTime"] == "2026-01-01T12:03:20Z"
    t2 = t1 + dt.timedelta(seconds=299)
    still = decide(observe(moved, s, now=t2, progress={"step": 6}, **running_pods()))
    assert still.status["phase"] == "Running" and still.requeue_after == pytest.approx(1)
    t3 = t1 + dt.timedelta(seconds=301)
    hung = decide(observe(still.status, s, now=t3, progress={"step": 6}, **running_pods()))
    assert hung.status["phase"] == "Restarting" and hung.status["restarts"] == 1
    assert cond(hung, "Restarting")["reason"] == "ProgressTimeout"
    assert "no new step" in cond(hung, "Restarting")["message"]
    assert "last step 6" in cond(hung, "Restarting")["message"]
    assert DeleteTrainer in acts(hung) and "lastProgressTime" not in hung.status


def test_progress_timeout_is_off_by_default() -> None:
    from agpo_api.models import RunPolicy

    assert RunPolicy().progress_timeout_seconds is None
    assert RunPolicy().startup_timeout_seconds == 1800
    s = spec(runPolicy__progressTimeoutSeconds=None)
    first = decide(observe(created(s), s, progress={"step": 5}, **running_pods())).status
    later = T0 + dt.timedelta(days=3)
    d = decide(observe(first, s, now=later, progress={"step": 5}, **running_pods()))
    assert d.status["phase"] == "Running"


def test_success_takes_the_final_progress_from_rank_0s_termination_message() -> None:
    """Gap (d): after success the CR kept the last periodic poll's step and reward."""
    status = {**created(), "step": 70, "rewardMean": 0.5}
    final = 'succeeded: {"phase":"Succeeded","rewardMean":0.875,"step":80,"totalSteps":80}'
    pod = terminated_pod("j-trainer-0-x", final, exit_code=0)
    d = decide(observe(status, rollout_pods=ROLLOUT_OK, trainer_pods=(pod,)))
    assert d.status["phase"] == "Succeeded"
    assert d.status["step"] == 80 and d.status["rewardMean"] == 0.875


def test_deleted_static_children_are_recreated() -> None:
    """Gap (d): only the StatefulSet and the trainer Job were recreated."""
    missing = ("ConfigMap/j-spec", "Service/j-trainer")
    d = decide(observe(created(), missing_static=missing, **running_pods()))
    assert CreateStatic(missing) in d.actions
    assert [e.reason for e in d.events if e.reason == "ChildrenRecreated"] == ["ChildrenRecreated"]
    assert "ConfigMap/j-spec" in d.events[0].message
    suspended = decide(observe(created(spec(runPolicy__suspend=True)), missing_static=missing))
    assert CreateStatic(missing) in suspended.actions


def test_a_deleted_token_secret_is_recreated_and_every_pod_restarts() -> None:
    status = decide(observe(created(), **running_pods())).status
    secret_gone = 'secret "j-rollout-token" not found'
    pods = {
        "rollout_pods": (PodView("j-rollout-0", "Running", ready=True),),
        "trainer_pods": (waiting_pod("j-trainer-0-y", "CreateContainerConfigError", secret_gone),),
    }
    d = decide(observe(status, **pods))
    assert d.actions[0] == CreateStatic(("Secret/j-rollout-token",))
    assert DeleteTrainer in acts(d) and DeletePods(("j-rollout-0",)) in d.actions
    assert cond(d, "Restarting")["reason"] == "TokenSecretMissing"
    again = decide(observe(d.status, **pods))  # the same pod, seen again: no second restart
    assert again.status["restarts"] == 1 and again.actions == [
        CreateStatic(("Secret/j-rollout-token",))
    ]


def test_emptydir_checkpoints_warn() -> None:
    s = spec(training__checkpoint={"storage": {"emptyDir": True}})
    d = decide(Observation("j", "ns", 1, T0, {}, s))
    warning = cond(d, "EphemeralCheckpoints")
    assert warning["status"] == "True" and warning["reason"] == "CheckpointsOnEmptyDir"
    assert "lost when the trainer pod is replaced" in warning["message"]
    assert ("Warning", "CheckpointsOnEmptyDir") in [(e.type, e.reason) for e in d.events]
    assert all(c["type"] != "EphemeralCheckpoints" for c in created()["conditions"])
