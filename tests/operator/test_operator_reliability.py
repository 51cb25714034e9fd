"""Reliability against the emulator: one test per gap of the "Reliability" issue.

(a) checkpoints survive pod replacement (a claim by default); (b) permanent failures fail at
once with the trainer's reason, transient ones restart with it; (c) no endless waiting
(startupTimeoutSeconds); (d) the final progress after success, and deleted static children
recreated; (e) a vLLM server that fails while the job runs is replaced alone, the trainer goes
on (the elastic pool). The pure decisions behind them are in test_decide.py.
"""

from __future__ import annotations

from typing import Any

from test_operator import clean, counter, run_to_running
from test_scaling import trainer_identity

from agpo_api.termination import FailureKind, format_success, format_termination

from operator_support import NS, Operator, World, eventually, sample


async def test_checkpoints_get_a_claim_owned_by_the_job_before_the_trainer(
    world: World, operator: Operator
) -> None:
    await world.create_job(sample(name="keep", training__checkpoint={}))
    await world.create_job(
        sample(name="kept", training__checkpoint={"storage": {"size": "2Gi", "reclaim": "Retain"}})
    )
    await world.create_job(
        sample(name="lossy", training__checkpoint={"storage": {"emptyDir": True}})
    )
    tj = await eventually(lambda: world.get("jobs", "keep-trainer"))
    claim = world.get("persistentvolumeclaims", "keep-checkpoints")
    assert claim is not None and claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["metadata"]["ownerReferences"][0]["name"] == "keep"
    pvc_post = world.creates("persistentvolumeclaims", "keep-checkpoints")[0]
    job_post = world.creates("jobs", "keep-trainer")[0]
    assert pvc_post.done <= job_post.at, "the claim is created before the trainer Job"
    volumes = {v["name"]: v for v in tj["spec"]["template"]["spec"]["volumes"]}
    assert volumes["checkpoints"] == {
        "name": "checkpoints", "persistentVolumeClaim": {"claimName": "keep-checkpoints"}
    }  # fmt: skip

    retained = await eventually(lambda: world.get("persistentvolumeclaims", "kept-checkpoints"))
    assert "ownerReferences" not in retained["metadata"]
    await world.delete_job("kept")
    await eventually(lambda: world.get("agpojobs", "kept") is None)
    assert world.get("persistentvolumeclaims", "kept-checkpoints") is not None  # Retain
    await world.create_job(
        sample(name="kept", training__checkpoint={"storage": {"size": "2Gi", "reclaim": "Retain"}})
    )  # a new job of the same name resumes from the retained claim
    await eventually(lambda: world.get("jobs", "kept-trainer"))
    await eventually(lambda: world.condition("kept", "Created").get("status") == "True")

    await eventually(lambda: world.condition("lossy", "EphemeralCheckpoints").get("status"))
    assert (
        "lost when the trainer pod is replaced"
        in world.condition("lossy", "EphemeralCheckpoints")["message"]
    )
    await eventually(lambda: "CheckpointsOnEmptyDir" in world.reasons("lossy"))
    assert world.get("persistentvolumeclaims", "lossy-checkpoints") is None
    # Expected: the second job's 409 for the retained claim; kopf's finalizer patch racing the
    # deletion of the first job of the same name (its JSON-patch test answers 422).
    expected = ("persistentvolumeclaims -> 409", "agpojobs/kept -> 422")
    assert [e for e in world.errors() if not e.endswith(expected)] == []
    assert world.forbidden() == []


async def test_a_permanent_failure_fails_at_once_and_a_transient_one_restarts(
    world: World, operator: Operator
) -> None:
    await world.create_job(sample(name="flaw"))
    await run_to_running(world, "flaw")
    pod = world.pods("flaw", "trainer")[0]
    transient = format_termination(FailureKind.TRANSIENT, "NCCL watchdog timeout")
    await world.set_pod(pod, "Failed", exit_code=1, message=transient)
    await eventually(lambda: world.status("flaw").get("restarts") == 1)
    assert "transient: NCCL watchdog timeout" in world.condition("flaw", "Restarting")["message"]
    await eventually(lambda: (world.get("jobs", "flaw-trainer") or {}).get("metadata", {})
                     .get("labels", {}).get("agpo.dev/attempt") == "1")  # fmt: skip
    await world.start_trainer("flaw")
    await eventually(lambda: world.status("flaw").get("phase") == "Running")

    pod = world.pods("flaw", "trainer")[0]
    reason = "dataset row 17: missing field 'prompt' (dataset.badRows: fail)"
    await world.set_pod(pod, "Failed", exit_code=1,
                        message=f"Traceback ...\n{format_termination(FailureKind.PERMANENT, reason)}")  # fmt: skip
    await eventually(lambda: world.status("flaw").get("phase") == "Failed")
    failed = world.condition("flaw", "Failed")
    assert failed["reason"] == "PermanentFailure" and reason in failed["message"]
    assert world.status("flaw")["restarts"] == 1  # no backoff spent
    event = await eventually(
        lambda: [e for e in world.events("flaw") if e["reason"] == "PermanentFailure"]
    )
    assert reason in event[0]["message"] and event[0]["type"] == "Warning"
    assert len(world.creates("jobs", "flaw-trainer")) == 2
    clean(world)


async def test_pods_that_never_start_time_out_with_their_reason(
    world: World, operator: Operator
) -> None:
    # The clock starts when the trainer Job is created; the pod is created already waiting
    # (one status patch), and 3 s leaves a slow CI machine room to do both before it fires.
    await world.create_job(sample(name="stuck", runPolicy__startupTimeoutSeconds=3))
    await eventually(lambda: world.get("statefulsets", "stuck-rollout"))
    await world.start_rollout("stuck")
    await eventually(lambda: world.get("jobs", "stuck-trainer"))
    pull = ("ImagePullBackOff", 'Back-off pulling image "trainer:test"')
    pod = (await world.start_trainer("stuck", phase="Pending", waiting=pull))[0]
    await eventually(lambda: world.status("stuck").get("phase") == "Failed", timeout=10)
    failed = world.condition("stuck", "Failed")
    assert failed["reason"] == "StartupTimeout"
    assert "ImagePullBackOff" in failed["message"] and pod in failed["message"]
    await eventually(lambda: "StartupTimeout" in world.reasons("stuck"))
    clean(world)


async def test_the_final_progress_reaches_the_status(world: World, operator: Operator) -> None:
    await world.create_job(sample(name="last"))
    await run_to_running(world, "last")
    world.set_progress("last", step=7, totalSteps=30, rewardMean=0.25)
    await eventually(lambda: world.status("last").get("step") == 7)
    del world.progress[(NS, "last")]  # the process exits: /status answers no more
    final = format_success({"step": 30, "totalSteps": 30, "rewardMean": 0.75, "phase": "done"})
    await world.set_pod(world.pods("last", "trainer")[0], "Succeeded", exit_code=0, message=final)
    await eventually(lambda: world.status("last").get("phase") == "Succeeded")
    status = world.status("last")
    assert status["step"] == 30 and status["rewardMean"] == 0.75
    clean(world)


async def test_deleted_static_children_are_recreated(world: World, operator: Operator) -> None:
    await world.create_job(sample(name="mend"))
    await run_to_running(world, "mend")
    for path in (f"/api/v1/namespaces/{NS}/configmaps/mend-spec",
                 f"/api/v1/namespaces/{NS}/services/mend-trainer",
                 f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/mend-rollout",
                 f"/api/v1/namespaces/{NS}/persistentvolumeclaims/mend-checkpoints"):  # fmt: skip
        await world.http("DELETE", path)
    await eventually(
        lambda: (
            world.get("configmaps", "mend-spec")
            and world.get("services", "mend-trainer")
            and world.get("networkpolicies", "mend-rollout")
            and world.get("persistentvolumeclaims", "mend-checkpoints")
        ),
        what="the deleted children back",
    )
    event = await eventually(
        lambda: [e for e in world.events("mend") if e["reason"] == "ChildrenRecreated"]
    )
    assert "ConfigMap/mend-spec" in event[0]["message"]
    for plural, name in (("configmaps", "mend-spec"), ("services", "mend-trainer"),
                         ("services", "mend-rollout")):  # fmt: skip
        expected = 2 if name != "mend-rollout" else 1
        assert len(world.creates(plural, name)) == expected, f"{plural}/{name}"
    assert world.status("mend")["phase"] == "Running" and world.status("mend")["restarts"] == 0
    assert all("-> 404" in e and "GET" in e for e in world.errors())
    assert world.forbidden() == []


async def test_a_vllm_server_that_fails_while_running_is_replaced_and_the_trainer_goes_on(
    world: World, operator: Operator
) -> None:
    """(e) backoffLimit 0: a counted restart would fail the job at once."""
    replaced_before = counter("agpo_operator_rollout_pods_replaced_total")
    await world.create_job(sample(name="pool", rollout__replicas=2, runPolicy__backoffLimit=0))
    await run_to_running(world, "pool")
    trainer = trainer_identity(world, "pool")
    first_running = len(world.versions("agpojobs", "pool")) - 1

    def failures() -> list[dict[str, Any]]:
        return [e for e in world.events("pool") if e["reason"] == "RolloutPodFailed"]

    # A server dies (the pod fails), then another restarts in place (the kubelet did it).
    transient = format_termination(FailureKind.TRANSIENT, "CUDA error: an illegal memory access")
    kills = (("pool-rollout-1", "Failed", None, 0), ("pool-rollout-0", "Running", True, 1))
    for n, (pod, phase, ready, restarts) in enumerate(kills, start=1):
        uid = world.get("pods", pod)["metadata"]["uid"]
        await world.set_pod(pod, phase, ready=ready, restarts=restarts, exit_code=137,
                            message=transient)  # fmt: skip
        await eventually(lambda p=pod, u=uid: world.replaced(p, u), what=f"{pod} replaced")
        await eventually(lambda k=n: len(failures()) == k, what=f"{n} RolloutPodFailed events")
        events = failures()
        assert events[-1]["type"] == "Warning"
        message = events[-1]["message"]
        assert message.startswith(f"rollout pod {pod} failed: container main exited with code 137")
        assert "CUDA error: an illegal memory access" in message
        assert "the trainer goes on" in message and "\n" not in message
        assert await world.sync_rollout("pool") == [pod]  # the StatefulSet recreates it
        await eventually(lambda: world.condition("pool", "RolloutReady").get("status") == "True")

    # The trainer: the same Job and pods, never restarted; the job Running in every state since.
    assert trainer_identity(world, "pool") == trainer
    assert len(world.creates("jobs")) == 1 and world.deletes("jobs") == []
    assert [s.request.name for s in world.deletes("pods")] == ["pool-rollout-1", "pool-rollout-0"]
    phases = {(v.get("status") or {}).get("phase")
              for v in world.versions("agpojobs", "pool")[first_running:]}  # fmt: skip
    assert phases == {"Running"}
    assert world.status("pool")["restarts"] == 0
    assert world.condition("pool", "Restarting")["reason"] == "NoRestart"
    assert len(failures()) == 2  # one Warning per failure
    await eventually(
        lambda: counter("agpo_operator_rollout_pods_replaced_total") == replaced_before + 2
    )
    clean(world)


async def test_a_permanent_vllm_failure_still_fails_the_job(
    world: World, operator: Operator
) -> None:
    await world.create_job(sample(name="noload", rollout__replicas=2))
    await run_to_running(world, "noload")
    reason = "model /models/policy cannot load: config.json is missing"
    message = f"Traceback ...\n{format_termination(FailureKind.PERMANENT, reason)}"
    await world.set_pod("noload-rollout-1", "Failed", exit_code=1, message=message)
    await eventually(lambda: world.status("noload").get("phase") == "Failed")
    failed = world.condition("noload", "Failed")
    assert failed["reason"] == "PermanentFailure"
    assert "rollout pod noload-rollout-1" in failed["message"] and reason in failed["message"]
    assert world.status("noload")["restarts"] == 0
    assert len(world.creates("jobs", "noload-trainer")) == 1
    await eventually(lambda: "PermanentFailure" in world.reasons("noload"))
    clean(world)
