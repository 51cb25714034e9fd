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


def test_a_restarted_vllm_server_restarts_the_group_and_is_replaced() -> None:
    status = decide(observe(created(), **running_pods())).status
    broken = {
        "rollout_pods": (PodView("j-rollout-0", "Running", ready=True, restarts=1),),
        "trainer_pods": (PodView("j-trainer-0-x", "Running", index=0),),
    }
    d = decide(observe(status, **broken))
    assert cond(d, "Restarting")["reason"] == "RolloutPodFailed" and d.status["restarts"] == 1
    assert d.actions == [DeleteTrainer(), DeletePods(("j-rollout-0",))]
    # Seen again while restarting: replaced, not counted again.
    again = decide(observe(d.status, trainer_job=tj(1), **broken))
    assert again.status["restarts"] == 1 and again.actions == [DeletePods(("j-rollout-0",))]


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
