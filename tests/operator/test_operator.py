"""The real kopf operator against the emulated API server, over HTTP.

Each test plays the user (AGPOJobs), the StatefulSet/Job controllers and the kubelet (pods and
their phases), and asserts on what the operator did: the objects, the status, the events and
the emulator's request log (how many creates, no error responses, nothing RBAC would refuse).
"""

from __future__ import annotations

import base64
import json

import kmock
import pytest

from agpo_operator import metrics
from agpo_operator.builders import CHILDREN, build_children
from agpo_operator.builders.child import Lifetime
from agpo_operator.config import Config

from operator_support import NS, Operator, World, eventually, sample

CHILD_PLURALS = {k.kind: k.plural for k in CHILDREN.kinds()}
STATIC_PLURALS = {c.kind.plural for c in CHILDREN.of(Lifetime.STATIC)}


def clean(world: World) -> None:
    """No error response was served and every operator request is covered by its RBAC rules."""
    assert world.errors() == []
    assert world.forbidden() == []


def counter(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or None) or 0.0


def expected_children(name: str, **changes: object) -> list[tuple[str, str]]:
    from agpo_api import parse_job

    job = parse_job({**sample(name=name, **changes), "metadata": {"name": name}})
    objs = build_children(job, NS, Config.from_env().build_options())
    return [(CHILD_PLURALS[o["kind"]], o["metadata"]["name"]) for o in objs]


async def run_to_running(world: World, name: str) -> None:
    await eventually(lambda: world.get("jobs", f"{name}-trainer"), what="the trainer Job")
    await world.start_rollout(name)
    await world.start_trainer(name)
    await eventually(lambda: world.status(name).get("phase") == "Running", what="phase Running")


async def test_create_makes_every_child_once_with_owner_and_labels(
    world: World, operator: Operator
) -> None:
    created_before = counter("agpo_operator_jobs_created_total")
    job = await world.create_job(sample(name="alpha"))
    await world.create_job(sample(name="beta"))
    uid = (await eventually(lambda: world.get("agpojobs", "alpha")))["metadata"]["uid"]
    await eventually(lambda: world.condition("alpha", "Created").get("status") == "True")
    await eventually(lambda: "ChildrenCreated" in world.reasons("alpha"), what="event")

    children = expected_children("alpha")
    assert len(children) == 11  # with the checkpoint claim
    for plural, name in children:
        obj = world.get(plural, name)
        assert obj is not None, f"{plural}/{name} missing"
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "agpo.dev/v1alpha1", "kind": "AGPOJob", "name": "alpha", "uid": uid,
            "controller": True, "blockOwnerDeletion": True,
        }]  # fmt: skip
        labels = obj["metadata"]["labels"]
        assert labels["agpo.dev/job"] == "alpha" and labels["agpo.dev/role"]
        assert labels["app.kubernetes.io/managed-by"] == "agpo-operator"
        assert labels["app.kubernetes.io/instance"] == "alpha"
        assert len(world.creates(plural, name)) == 1, f"{plural}/{name} created more than once"

    # kopf's only write to the job itself is its finalizer (no progress annotations).
    kopf_patches = [s for s in world.operator_requests()
                    if s.request.method.value == "PATCH" and s.request.url.path.endswith("/agpojobs/alpha")]  # fmt: skip
    assert [p.request.data[-1]["path"] for p in kopf_patches] == ["/metadata/finalizers"]

    status = world.status("alpha")
    assert status["phase"] == "Pending"
    assert status["observedGeneration"] == job["metadata"]["generation"] == 1
    steps = sample()["spec"]["training"]["steps"]
    assert status["restarts"] == 0 and status["totalSteps"] == steps and status["startTime"]
    assert {c["type"] for c in status["conditions"]} == {
        "Created", "RolloutReady", "Running", "Restarting", "Suspended", "Succeeded", "Failed"
    }  # fmt: skip
    assert all(
        c["observedGeneration"] == 1 and c["lastTransitionTime"] for c in status["conditions"]
    )

    # The token: random per job, only in its Secret, referenced (never copied) by the pods.
    await eventually(lambda: world.get("secrets", "beta-rollout-token"))
    tokens = [
        base64.b64decode(world.get("secrets", f"{j}-rollout-token")["data"]["token"]).decode()
        for j in ("alpha", "beta")
    ]
    assert len(tokens[0]) >= 32 and tokens[0] != tokens[1]
    for plural in ("configmaps", "statefulsets", "jobs"):
        assert tokens[0] not in json.dumps(world.all(plural))
    await eventually(lambda: counter("agpo_operator_jobs_created_total") == created_before + 2)
    clean(world)


async def test_running_progress_success_and_cleanup(world: World, operator: Operator) -> None:
    succeeded_before = counter("agpo_operator_jobs_succeeded_total")
    await world.create_job(sample(name="run"))
    await eventually(lambda: world.get("statefulsets", "run-rollout"))
    rollout = await world.start_rollout("run", ready=False)
    await eventually(lambda: world.status("run").get("phase") == "Initializing")
    assert world.condition("run", "RolloutReady")["status"] == "False"

    await world.set_pod(rollout[0], "Running", ready=True)
    await eventually(lambda: world.condition("run", "RolloutReady").get("status") == "True")
    trainer = await world.start_trainer("run")
    world.set_progress("run", step=7, totalSteps=30, rewardMean=0.25, completionTokensMean=11.5,
                       zeroVarianceFraction=0.125, policyVersion=7, phase="training")  # fmt: skip
    await eventually(lambda: world.status("run").get("phase") == "Running")
    status = await eventually(lambda: world.status("run").get("step") == 7 and world.status("run"))
    assert status["rewardMean"] == 0.25 and status["completionTokensMean"] == 11.5
    assert status["zeroVarianceFraction"] == 0.125 and status["policyVersion"] == 7
    await eventually(lambda: {"AllReplicasReady", "TrainerRunning"} <= set(world.reasons("run")))

    await world.set_pod(trainer[0], "Succeeded", exit_code=0)
    await eventually(lambda: world.status("run").get("phase") == "Succeeded")
    status = world.status("run")
    assert world.condition("run", "Succeeded")["reason"] == "TrainingSucceeded"
    assert world.condition("run", "Running")["status"] == "False"
    assert status["completionTime"]
    # cleanPodPolicy Running: the vLLM servers go, the unfinished trainer Job is suspended.
    await eventually(lambda: world.get("statefulsets", "run-rollout") is None)
    await eventually(
        lambda: (world.get("jobs", "run-trainer") or {}).get("spec", {}).get("suspend")
    )
    await eventually(lambda: "TrainingSucceeded" in world.reasons("run"))
    await eventually(lambda: counter("agpo_operator_jobs_succeeded_total") == succeeded_before + 1)
    clean(world)


async def test_eval_figures_reach_the_cr_status(world: World, operator: Operator) -> None:
    """The trainer's /status serves the latest evaluation; the operator copies it into the CR
    (and leaves it out while the trainer has not evaluated yet)."""
    await world.create_job(sample(name="evals"))
    await run_to_running(world, "evals")
    world.set_progress("evals", step=3, totalSteps=30, rewardMean=0.5, phase="Running")
    status = await eventually(
        lambda: world.status("evals").get("step") == 3 and world.status("evals")
    )
    assert not {k for k in status if k.startswith("eval")}
    world.set_progress("evals", step=5, totalSteps=30, rewardMean=0.5, evalStep=5,
                       evalAccuracy=0.625, evalMeanAtK=0.5, evalPassAtK=0.875,
                       evalReasoningTokens=7.25, phase="Running")  # fmt: skip
    status = await eventually(
        lambda: world.status("evals").get("evalStep") == 5 and world.status("evals")
    )
    assert status["evalAccuracy"] == 0.625 and status["evalMeanAtK"] == 0.5
    assert status["evalPassAtK"] == 0.875 and status["evalReasoningTokens"] == 7.25
    clean(world)


@pytest.mark.parametrize(
    ("policy", "sts_kept", "job_kept"), [("All", False, False), ("None", True, True)]
)
async def test_clean_pod_policy(world: World, operator: Operator, policy: str, sts_kept: bool,
                                job_kept: bool) -> None:  # fmt: skip
    await world.create_job(sample(name="clean", runPolicy__cleanPodPolicy=policy))
    await run_to_running(world, "clean")
    for pod in world.pods("clean", "trainer"):
        await world.set_pod(pod, "Succeeded", exit_code=0)
    await eventually(lambda: world.status("clean").get("phase") == "Succeeded")
    await eventually(lambda: (world.get("statefulsets", "clean-rollout") is not None) == sts_kept)
    await eventually(lambda: (world.get("jobs", "clean-trainer") is not None) == job_kept)
    assert len(world.deletes("statefulsets")) == (0 if sts_kept else 1)
    clean(world)


async def test_failed_pods_restart_the_group_until_the_backoff_limit(
    world: World, operator: Operator
) -> None:
    restarted_before = counter("agpo_operator_jobs_restarted_total")
    failed_before = counter("agpo_operator_jobs_failed_total", reason="BackoffLimitExceeded")
    await world.create_job(sample(name="flaky"))  # backoffLimit 2
    await run_to_running(world, "flaky")
    first_uid = world.get("jobs", "flaky-trainer")["metadata"]["uid"]

    # 1. A trainer pod fails: the group restarts (a new Job, attempt 1).
    await world.set_pod(world.pods("flaky", "trainer")[0], "Failed", exit_code=1)
    await eventually(lambda: world.status("flaky").get("restarts") == 1)
    cond = world.condition("flaky", "Restarting")
    assert cond["status"] == "True" and cond["reason"] == "TrainerPodFailed"
    assert "exited with code 1" in cond["message"]
    assert world.status("flaky")["phase"] == "Restarting"
    new_job = await eventually(
        lambda: (
            (j := world.get("jobs", "flaky-trainer")) and j["metadata"]["uid"] != first_uid and j
        )
    )
    assert new_job["metadata"]["labels"]["agpo.dev/attempt"] == "1"
    await world.start_trainer("flaky")
    await eventually(lambda: world.status("flaky").get("phase") == "Running")
    assert world.condition("flaky", "Restarting")["reason"] == "Recovered"

    # 2. It fails again: the second restart (a failed vLLM pod of a running job restarts
    # nothing, it is replaced alone: test_operator_reliability).
    await world.set_pod(world.pods("flaky", "trainer")[0], "Failed", exit_code=1)
    await eventually(lambda: world.status("flaky").get("restarts") == 2)
    assert world.condition("flaky", "Restarting")["reason"] == "TrainerPodFailed"
    await eventually(lambda: (world.get("jobs", "flaky-trainer") or {}).get("metadata", {})
                     .get("labels", {}).get("agpo.dev/attempt") == "2")  # fmt: skip
    await world.start_trainer("flaky")
    await eventually(lambda: world.status("flaky").get("phase") == "Running")

    # 3. The third failure exceeds backoffLimit 2: Failed, never stuck in Running.
    await world.set_pod(world.pods("flaky", "trainer")[0], "Failed", exit_code=1)
    await eventually(lambda: world.status("flaky").get("phase") == "Failed")
    cond = world.condition("flaky", "Failed")
    assert cond["status"] == "True" and cond["reason"] == "BackoffLimitExceeded"
    assert world.condition("flaky", "Running")["status"] == "False"
    assert world.status("flaky")["restarts"] == 2
    assert len(world.creates("jobs", "flaky-trainer")) == 3
    await eventually(lambda: world.get("statefulsets", "flaky-rollout") is None)
    await eventually(lambda: world.reasons("flaky").count("TrainerPodFailed") == 2
                     and "BackoffLimitExceeded" in world.reasons("flaky"))  # fmt: skip
    await eventually(lambda: counter("agpo_operator_jobs_restarted_total") == restarted_before + 2)
    await eventually(lambda: counter("agpo_operator_jobs_failed_total", reason="BackoffLimitExceeded")
                     == failed_before + 1)  # fmt: skip
    clean(world)


async def test_deadline_fails_the_job_and_deadline_changes_apply(
    world: World, operator: Operator
) -> None:
    await world.create_job(sample(name="short", runPolicy__activeDeadlineSeconds=1))
    await world.create_job(sample(name="long", runPolicy__activeDeadlineSeconds=3600))
    await eventually(lambda: world.status("short").get("phase") == "Failed", timeout=5)
    cond = world.condition("short", "Failed")
    assert cond["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds (1s)" in cond["message"]
    await eventually(lambda: "DeadlineExceeded" in world.reasons("short"))
    assert world.status("long")["phase"] != "Failed"

    await world.patch_job("long", {"spec": {"runPolicy": {"activeDeadlineSeconds": 1}}})
    await eventually(
        lambda: world.condition("long", "Failed").get("reason") == "DeadlineExceeded", timeout=5
    )
    assert world.status("long")["observedGeneration"] == 2
    assert world.condition("long", "SpecChangeRefused") == {}
    clean(world)


async def test_suspend_tears_down_pods_and_resume_continues(
    world: World, operator: Operator
) -> None:
    await world.create_job(sample(name="nap"))
    await run_to_running(world, "nap")
    await world.patch_job("nap", {"spec": {"runPolicy": {"suspend": True}}})
    await eventually(lambda: world.status("nap").get("phase") == "Suspended")
    assert world.condition("nap", "Suspended")["status"] == "True"
    assert world.condition("nap", "Running")["status"] == "False"
    await eventually(lambda: world.get("statefulsets", "nap-rollout") is None
                     and world.get("jobs", "nap-trainer") is None)  # fmt: skip
    assert world.pods("nap", "trainer") == [] and world.pods("nap", "rollout") == []
    for plural, name in expected_children("nap"):
        if plural in STATIC_PLURALS:
            assert world.get(plural, name) is not None, f"{plural}/{name} was removed"

    await world.patch_job("nap", {"spec": {"runPolicy": {"suspend": False}}})
    await eventually(lambda: world.condition("nap", "Suspended").get("reason") == "Resumed")
    await eventually(
        lambda: world.get("jobs", "nap-trainer") and world.get("statefulsets", "nap-rollout")
    )
    assert len(world.creates("jobs", "nap-trainer")) == 2
    assert len(world.creates("configmaps")) == 1  # checkpoints and config are kept, not rebuilt
    await world.start_rollout("nap")
    await world.start_trainer("nap")
    await eventually(lambda: world.status("nap").get("phase") == "Running")
    assert world.status("nap")["restarts"] == 0
    await eventually(lambda: {"Suspended", "Resumed"} <= set(world.reasons("nap")))
    clean(world)


async def test_created_suspended_starts_no_pods(world: World, operator: Operator) -> None:
    await world.create_job(sample(name="later", runPolicy__suspend=True))
    await eventually(lambda: world.status("later").get("phase") == "Suspended")
    await eventually(lambda: world.get("configmaps", "later-spec"))
    assert world.creates("statefulsets") == [] and world.creates("jobs") == []
    clean(world)


async def test_deleting_the_job_stops_its_loop(world: World, operator: Operator) -> None:
    await world.create_job(sample(name="gone"))
    await run_to_running(world, "gone")
    meta = world.get("agpojobs", "gone")["metadata"]
    assert meta["finalizers"] == ["agpo.dev/operator"]
    requests_before = len(world.operator_requests())
    await world.delete_job("gone")
    await eventually(lambda: world.get("agpojobs", "gone") is None, what="finalizer removed")
    # Owner references let the garbage collector (emulated here) remove every child.
    for plural, name in expected_children("gone"):
        assert world.get(plural, name) is None
    await eventually(lambda: ("ml", "gone") not in operator.memo.agpo.reconcilers)
    later = world.operator_requests()[requests_before:]
    assert [
        str(s) for s in later if s.request.method.value == "POST" and "events" not in str(s)
    ] == []
    clean(world)


async def test_invalid_spec_fails_without_children_and_others_are_served(world: World,
                                                                         operator: Operator) -> None:  # fmt: skip
    failed_before = counter("agpo_operator_jobs_failed_total", reason="InvalidSpec")
    await world.create_job(sample(name="bad", training__warmupSteps=500))  # steps: 30
    await world.create_job(sample(name="good"))
    await eventually(lambda: world.status("bad").get("phase") == "Failed")
    cond = world.condition("bad", "Failed")
    assert cond["reason"] == "InvalidSpec" and "spec.training.warmupSteps" in cond["message"]
    assert world.condition("bad", "Created")["status"] == "False"
    await eventually(lambda: world.get("jobs", "good-trainer"), what="the valid job's children")
    assert [s for s in world.operator_requests()
            if s.request.method.value == "POST" and s.request.resource.plural != "events"
            and (s.request.data or {}).get("metadata", {}).get("name", "").startswith("bad")] == []  # fmt: skip
    await eventually(lambda: "InvalidSpec" in world.reasons("bad"))
    await eventually(lambda: counter("agpo_operator_jobs_failed_total", reason="InvalidSpec")
                     == failed_before + 1)  # fmt: skip

    # Corrected, the job starts.
    await world.patch_job("bad", {"spec": {"training": {"warmupSteps": 2}}})
    await eventually(lambda: world.get("jobs", "bad-trainer"), what="children after the fix")
    await eventually(lambda: world.condition("bad", "Failed").get("reason") == "SpecCorrected")
    assert world.status("bad")["phase"] == "Pending"
    clean(world)


async def test_immutable_changes_are_refused_with_a_condition(
    world: World, operator: Operator
) -> None:
    await world.create_job(sample(name="fixed"))
    await run_to_running(world, "fixed")
    await world.patch_job(
        "fixed", {"spec": {"trainer": {"nodes": 2}, "runPolicy": {"backoffLimit": 5}}}
    )
    cond = await eventually(lambda: (c := world.condition("fixed", "SpecChangeRefused")) and c)
    assert cond["status"] == "True" and cond["reason"] == "ImmutableField"
    assert (
        "spec.trainer.nodes" in cond["message"]
        and "backoffLimit" not in cond["message"].split(".")[0]
    )
    assert world.status("fixed")["phase"] == "Running"
    assert world.get("jobs", "fixed-trainer")["spec"]["completions"] == 1
    assert len(world.creates("jobs")) == 1
    await eventually(lambda: "ImmutableField" in world.reasons("fixed"))

    await world.patch_job("fixed", {"spec": {"trainer": {"nodes": 1}}})
    await eventually(
        lambda: world.condition("fixed", "SpecChangeRefused").get("reason") == "SpecAccepted"
    )
    assert world.status("fixed")["observedGeneration"] == 3
    clean(world)


async def test_operator_restart_mid_job_repeats_nothing(world: World, operator: Operator) -> None:
    await world.create_job(sample(name="steady"))
    await world.create_job(sample(name="paused", runPolicy__suspend=True))
    await run_to_running(world, "steady")
    world.set_progress("steady", step=3, totalSteps=30)
    await eventually(lambda: world.status("steady").get("step") == 3)
    await eventually(lambda: world.status("paused").get("phase") == "Suspended")
    await eventually(lambda: "TrainerRunning" in world.reasons("steady"))
    before = world.status("steady")
    events_before = sorted(e["metadata"]["name"] for e in world.all("events"))
    await operator.stop()
    n_requests = len(world.cluster.served)

    await operator.start()
    world.set_progress("steady", step=4, totalSteps=30)
    await eventually(
        lambda: world.status("steady").get("step") == 4, what="the new operator's poll"
    )
    after = world.operator_requests()
    new = [s for s in world.cluster.served[n_requests:] if s in after]
    writes = [str(s) for s in new if s.request.method.value in {"POST", "DELETE"}]
    assert writes == [], "the restarted operator created or deleted something"
    status = world.status("steady")
    assert status["conditions"] == before["conditions"]
    assert status["phase"] == "Running" and status["restarts"] == 0
    assert sorted(e["metadata"]["name"] for e in world.all("events")) == events_before
    assert world.status("paused")["phase"] == "Suspended"
    clean(world)


async def test_ttl_deletes_the_finished_job(world: World, operator: Operator) -> None:
    await world.create_job(sample(name="brief", runPolicy__ttlSecondsAfterFinished=0))
    await run_to_running(world, "brief")
    await world.set_pod(world.pods("brief", "trainer")[0], "Succeeded", exit_code=0)
    await eventually(lambda: world.get("agpojobs", "brief") is None, what="TTL deletion")
    assert len(world.deletes("agpojobs", "brief")) == 1
    clean(world)


async def test_pod_monitor_only_where_the_api_exists(world: World, operator: Operator) -> None:
    await world.create_job(sample(name="nomon", metrics__podMonitor=True))
    await eventually(lambda: "PodMonitorUnavailable" in world.reasons("nomon"))
    await eventually(lambda: world.get("jobs", "nomon-trainer"), what="the job runs all the same")
    assert world.creates("podmonitors") == []

    world.cluster.resources["monitoring.coreos.com/v1/podmonitors"] = kmock.ResourceInfo(
        kind="PodMonitor", namespaced=True, verbs={"get", "create"}
    )
    operator.memo.agpo._groups = None  # forget the cached discovery (it is re-read every 5 min)
    await world.create_job(sample(name="mon", metrics__podMonitor=True))
    monitor = await eventually(lambda: world.get("podmonitors", "mon-trainer-metrics"))
    assert monitor["metadata"]["ownerReferences"][0]["name"] == "mon"
    assert (
        monitor["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/job-completion-index"]
        == "0"
    )
    assert "PodMonitorUnavailable" not in world.reasons("mon")
    # The periodic check of static children finds the first job's PodMonitor missing now that
    # its API exists (one 404), and creates it.
    await eventually(lambda: world.get("podmonitors", "nomon-trainer-metrics"))
    assert [e for e in world.errors() if "nomon-trainer-metrics -> 404" not in e] == []
    assert world.forbidden() == []


async def test_metrics_by_phase(world: World, operator: Operator) -> None:
    await world.create_job(sample(name="gauge"))
    await eventually(lambda: counter("agpo_operator_jobs", phase="Pending") >= 1)
    await run_to_running(world, "gauge")
    await eventually(lambda: counter("agpo_operator_jobs", phase="Running") == 1)
    assert counter("agpo_operator_jobs", phase="Pending") == 0
    assert counter("agpo_operator_reconcile_duration_seconds_count") > 0
    await world.delete_job("gauge")
    await eventually(lambda: counter("agpo_operator_jobs", phase="Running") == 0)
    clean(world)


async def test_a_foreign_object_with_a_childs_name_is_not_adopted(
    world: World, operator: Operator
) -> None:
    await world.http("POST", f"/api/v1/namespaces/{NS}/configmaps",
                     {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "clash-spec"}})  # fmt: skip
    await world.create_job(sample(name="clash"))
    event = await eventually(
        lambda: [e for e in world.events("clash") if e["reason"] == "ReconcileError"]
    )
    assert "ConfigMap clash-spec exists and is not owned by this AGPOJob" in event[0]["message"]
    assert world.creates("statefulsets") == [] and world.creates("jobs") == []
    assert world.condition("clash", "Created") == {}
    assert world.get("configmaps", "clash-spec")["metadata"].get("ownerReferences") is None
    assert world.forbidden() == []


async def test_spec_changed_while_the_operator_was_down(world: World, operator: Operator) -> None:
    await world.create_job(sample(name="offline"))
    await run_to_running(world, "offline")
    await operator.stop()
    await world.patch_job(
        "offline", {"spec": {"trainer": {"nodes": 2}, "runPolicy": {"suspend": True}}}
    )
    await operator.start()
    # The new operator reads the running spec back from the job's ConfigMap.
    await eventually(
        lambda: world.condition("offline", "SpecChangeRefused").get("status") == "True"
    )
    assert "spec.trainer.nodes" in world.condition("offline", "SpecChangeRefused")["message"]
    await eventually(
        lambda: world.status("offline").get("phase") == "Suspended"
    )  # mutable: applied
    assert len(world.creates("configmaps", "offline-spec")) == 1
    clean(world)
