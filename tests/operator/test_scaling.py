"""An elastic rollout pool: ``spec.rollout.replicas`` changes on a live job (``kubectl scale``,
an HPA on the CR's scale subresource), the operator scales the StatefulSet and leaves the
trainer alone; ``WeightSyncDegraded`` follows the trainer's ``laggingServers``.

Pure parts (builders, spec changes, decisions) first, then the real kopf operator against the
emulated API server, whose ``/scale`` subresource maps through the paths of the generated CRD.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_gang import K8S_VERSION

from agpo_api import AGPOJobSpec, parse_job
from agpo_operator.actions import ScaleRollout
from agpo_operator.builders import BuildOptions, build_children
from agpo_operator.decide import decide
from agpo_operator.observe import Observation, PodView
from agpo_operator.rbac import allows, rbac_rules
from agpo_operator.spec_change import effective_spec, immutable_changes

from operator_support import NS, Operator, World, eventually, sample

OPTIONS = BuildOptions(trainer_image="trainer:t", rollout_image="rollout:t")
T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
SCALE = "application/merge-patch+json"  # what `kubectl scale` sends to .../scale


def spec(file: str = "tiny-cpu", **changes: Any) -> AGPOJobSpec:
    manifest = sample(file, **changes)
    manifest["metadata"] = {"name": "j"}
    return parse_job(manifest).spec


def objects(replicas: int, file: str = "tiny-cpu") -> dict[tuple[str, str], dict[str, Any]]:
    job = parse_job({**sample(file, rollout__replicas=replicas), "metadata": {"name": "j"}})
    return {(o["kind"], o["metadata"]["name"]): o for o in build_children(job, NS, OPTIONS)}


# ---------------------------------------------------------------------- builders and RBAC
def test_only_the_statefulset_depends_on_the_pool_size() -> None:
    """Scaling changes the StatefulSet's replicas and nothing else: the trainer Job's pod
    template (which a change would make a new Job) finds the servers by DNS."""
    one, five = objects(1), objects(5)
    assert one.keys() == five.keys()
    for key in one:
        if key == ("StatefulSet", "j-rollout"):
            assert one[key]["spec"].pop("replicas") == 1 and five[key]["spec"].pop("replicas") == 5
        if key == ("ConfigMap", "j-spec"):  # the job as created: written once, immutable
            files = [yaml.safe_load(o[key].pop("data")["job.yaml"]) for o in (one, five)]
            assert [f["spec"]["rollout"].pop("replicas") for f in files] == [1, 5]
            assert files[0] == files[1]
        assert one[key] == five[key], key
    for (kind, name), obj in five.items():
        if kind != "PodMonitor":
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:  # pragma: no cover - message
                pytest.fail(f"{kind}/{name}: {err.message} at {list(err.path)}")


def test_discovery_needs_no_api_access_and_scaling_only_the_scale_subresource() -> None:
    objs = objects(2)
    pod = objs[("Job", "j-trainer")]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["AGPO_ROLLOUT_DISCOVERY"] == f"dns://j-rollout.{NS}.svc:8000"
    # DNS, not the API: the trainer's account has no token mounted and no Role is bound.
    assert pod["serviceAccountName"] == "j-workload"
    assert pod["automountServiceAccountToken"] is False
    assert objs[("ServiceAccount", "j-workload")]["automountServiceAccountToken"] is False
    assert not [k for k in objs if k[0] in {"Role", "RoleBinding", "ClusterRoleBinding"}]
    # The headless Service lists every vLLM pod, ready or not: the trainer probes each.
    service = objs[("Service", "j-rollout")]["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    # The operator changes a StatefulSet's size and nothing else of it.
    rules = rbac_rules()
    assert allows(rules, "apps", "statefulsets/scale", "patch")
    assert not any(allows(rules, "apps", "statefulsets", v) for v in ("patch", "update"))
    assert not allows(rules, "apps", "statefulsets/scale", "update")


# ---------------------------------------------------------------------- spec changes
def test_replicas_may_change_except_where_a_pod_count_is_fixed() -> None:
    assert immutable_changes(spec(), spec(rollout__replicas=3)) == []
    assert effective_spec(spec(), spec(rollout__replicas=3)).rollout.replicas == 3

    gang = {"runPolicy__gang": {"mode": "coscheduling"}}
    [line] = immutable_changes(spec(**gang), spec(**gang, rollout__replicas=3))
    assert line.startswith("spec.rollout.replicas cannot change on this job (running: 1, "
                           "requested: 3): runPolicy.gang is set")  # fmt: skip
    assert "admitted" in line and "\n" not in line
    assert effective_spec(spec(**gang), spec(**gang, rollout__replicas=3)).rollout.replicas == 1

    # nccl: server i rendezvouses on weightSync.port + i, inside the block the trainer's
    # NetworkPolicy admits whole; the CRD's rule keeps the pool within it
    assert (
        immutable_changes(spec("qwen-math-gpu"), spec("qwen-math-gpu", rollout__replicas=4)) == []
    )


# ---------------------------------------------------------------------- decisions
def running(s: AGPOJobSpec, **children: Any) -> Observation:
    """A job that was Running with one ready vLLM server, now observed with ``children``."""
    first = decide(Observation("j", "ns", 1, T0, {}, spec()))
    pods = {"rollout_pods": (PodView("j-rollout-0", "Running", ready=True),),
            "trainer_pods": (PodView("j-trainer-0-x", "Running", index=0),)}  # fmt: skip
    base = {"statefulset": sts(1), "trainer_job": {"metadata": {
        "name": "j-trainer", "uid": "job-uid", "labels": {"agpo.dev/attempt": "0"}}}}  # fmt: skip
    ran = decide(Observation("j", "ns", 1, T0, first.status, spec(), **base, **pods))
    assert ran.status["phase"] == "Running"
    return Observation("j", "ns", 2, T0, ran.status, s, **{**base, **pods, **children})


def sts(replicas: int, ready: int | None = None) -> dict[str, Any]:
    status = {} if ready is None else {"status": {"readyReplicas": ready}}
    meta = {"name": "j-rollout", "uid": "sts-uid"}
    return {"metadata": meta, "spec": {"replicas": replicas}, **status}


def test_a_larger_pool_scales_the_statefulset_and_keeps_the_job_running() -> None:
    d = decide(running(spec(rollout__replicas=3)))
    assert d.actions == [ScaleRollout(3)]
    assert [(e.type, e.reason, e.message) for e in d.events] == [
        ("Normal", "RolloutScaled", "rollout scaled from 1 to 3 servers")
    ]
    assert d.status["phase"] == "Running"
    rollout_ready = next(c for c in d.status["conditions"] if c["type"] == "RolloutReady")
    assert (
        rollout_ready["status"] == "False" and rollout_ready["message"] == "1/3 vLLM servers ready"
    )

    # Later: the new servers wait for room, long past startupTimeoutSeconds. Still Running
    # (one server serves), nothing restarted, nothing failed, no Warning.
    waiting = (PodView("j-rollout-1", "Pending", waiting="Unschedulable: 0/4 nodes"),
               PodView("j-rollout-2", "Pending", waiting="Unschedulable: 0/4 nodes"))  # fmt: skip
    larger = spec(rollout__replicas=3, runPolicy__progressTimeoutSeconds=None)
    obs = dataclasses.replace(
        running(larger, statefulset=sts(3, ready=1)),
        status=d.status, now=T0 + dt.timedelta(hours=2),  # startupTimeoutSeconds: 900
    )  # fmt: skip
    obs = dataclasses.replace(obs, rollout_pods=(*obs.rollout_pods, *waiting))
    later = decide(obs)
    assert later.actions == [] and later.events == []
    assert later.status["phase"] == "Running" and "waitingSince" not in later.status
    assert later.status["rolloutReplicas"] == 1
    assert later.status["rolloutSelector"] == "agpo.dev/job=j,agpo.dev/role=rollout"


def test_a_ready_server_lost_without_a_scale_is_still_a_warning() -> None:
    pods = (PodView("j-rollout-0", "Running", ready=False),)
    d = decide(running(spec(), rollout_pods=pods))
    assert ("Warning", "ReplicasNotReady") in [(e.type, e.reason) for e in d.events]
    assert d.status["phase"] == "Initializing"  # no server serves: as before


def lagging(obs: Observation, servers: Any) -> Observation:
    progress = {"step": 3} if servers is None else {"step": 3, "laggingServers": servers}
    return dataclasses.replace(obs, progress=progress)


def test_weight_sync_degraded_follows_the_lagging_servers() -> None:
    obs = running(spec())
    quiet = decide(lagging(obs, None))
    assert not [c for c in quiet.status["conditions"] if c["type"] == "WeightSyncDegraded"]

    def degraded(d: Any) -> dict[str, Any]:
        return next(c for c in d.status["conditions"] if c["type"] == "WeightSyncDegraded")

    first = decide(lagging(obs, ["http://10.0.0.7:8000"]))
    assert degraded(first)["status"] == "True" and degraded(first)["reason"] == "ServersLagging"
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "ServersLagging")]
    assert "http://10.0.0.7:8000" in first.events[0].message
    assert first.status["phase"] == "Running" and first.actions == []

    obs = dataclasses.replace(obs, status=first.status)
    assert decide(lagging(obs, ["http://10.0.0.7:8000"])).events == []  # the same set: quiet
    assert decide(lagging(obs, None)).status["conditions"] == first.status["conditions"]
    assert decide(lagging(obs, "junk")).status["conditions"] == first.status["conditions"]
    more = decide(lagging(obs, ["http://10.0.0.9:8000", "http://10.0.0.7:8000"]))
    assert [e.reason for e in more.events] == ["ServersLagging"]
    assert "http://10.0.0.7:8000, http://10.0.0.9:8000" in more.events[0].message

    back = decide(lagging(obs, []))
    assert degraded(back)["status"] == "False" and degraded(back)["reason"] == "AllServersServing"
    assert [(e.type, e.reason) for e in back.events] == [("Normal", "AllServersServing")]


# ---------------------------------------------------------------------- the operator
async def run_to_running(world: World, name: str) -> None:
    await eventually(lambda: world.get("jobs", f"{name}-trainer"), what="the trainer Job")
    await world.start_rollout(name)
    await world.start_trainer(name)
    await eventually(lambda: world.status(name).get("phase") == "Running", what="phase Running")


def scale_path(name: str) -> str:
    return f"/apis/agpo.dev/v1alpha1/namespaces/{NS}/agpojobs/{name}/scale"


def sts_replicas(world: World, name: str) -> int | None:
    return (world.get("statefulsets", f"{name}-rollout") or {}).get("spec", {}).get("replicas")


def trainer_identity(world: World, name: str) -> tuple[str, list[str]]:
    """The trainer Job's uid and its pods' uids: a restart or a new Job changes them."""
    job = world.get("jobs", f"{name}-trainer")
    pods = [world.get("pods", p)["metadata"]["uid"] for p in world.pods(name, "trainer")]
    return job["metadata"]["uid"], pods


async def test_scaling_a_running_job_never_touches_the_trainer(
    world: World, operator: Operator
) -> None:
    await world.create_job(sample(name="pool"))
    await run_to_running(world, "pool")
    world.set_progress("pool", step=2, totalSteps=30, rolloutServers=1, servingServers=1)
    await eventually(lambda: world.status("pool").get("servingServers") == 1)
    trainer = trainer_identity(world, "pool")
    running_since = world.condition("pool", "Running")["lastTransitionTime"]

    # 1 -> 3, as a user edits the spec; the new servers become ready and the trainer joins them.
    await world.patch_job("pool", {"spec": {"rollout": {"replicas": 3}}})
    await eventually(lambda: sts_replicas(world, "pool") == 3, what="the StatefulSet scaled up")
    await eventually(lambda: "rollout scaled from 1 to 3 servers"
                     in [e["message"] for e in world.events("pool")])  # fmt: skip
    assert world.condition("pool", "RolloutReady")["message"] == "1/3 vLLM servers ready"
    assert await world.sync_rollout("pool") == ["pool-rollout-1", "pool-rollout-2"]
    world.set_progress("pool", step=3, totalSteps=30, rolloutServers=3, servingServers=3)
    await eventually(lambda: world.status("pool").get("servingServers") == 3)
    await eventually(lambda: world.status("pool").get("rolloutReplicas") == 3)
    await eventually(lambda: world.condition("pool", "RolloutReady").get("status") == "True")

    # 3 -> 1, as `kubectl scale agpojob/pool --replicas=1` does it: the CR's scale subresource.
    await world.http("PATCH", scale_path("pool"), {"spec": {"replicas": 1}}, SCALE)
    await eventually(lambda: sts_replicas(world, "pool") == 1, what="the StatefulSet scaled down")
    await world.sync_rollout("pool")
    await eventually(lambda: world.status("pool").get("rolloutReplicas") == 1)
    assert world.pods("pool", "rollout") == ["pool-rollout-0"]

    scaled = [e["message"] for e in world.events("pool") if e["reason"] == "RolloutScaled"]
    assert scaled == ["rollout scaled from 1 to 3 servers", "rollout scaled from 3 to 1 servers"]
    assert all(
        e["type"] == "Normal" for e in world.events("pool") if e["reason"] == "RolloutScaled"
    )
    # The trainer: the same Job and pods, created once, never patched, deleted or restarted.
    assert trainer_identity(world, "pool") == trainer
    assert len(world.creates("jobs")) == 1 and world.deletes("jobs") == []
    assert [s for s in world.operator_requests()
            if s.request.method.value == "PATCH" and s.request.resource.plural == "jobs"] == []  # fmt: skip
    assert world.status("pool")["restarts"] == 0
    # Running throughout: no state of the job since then says otherwise, no Warning was posted.
    first = next(i for i, v in enumerate(world.versions("agpojobs", "pool"))
                 if (v.get("status") or {}).get("phase") == "Running")  # fmt: skip
    phases = {(v.get("status") or {}).get("phase")
              for v in world.versions("agpojobs", "pool")[first:]}  # fmt: skip
    assert phases == {"Running"}
    assert world.condition("pool", "Running")["lastTransitionTime"] == running_since
    assert [e["reason"] for e in world.events("pool") if e["type"] == "Warning"] == []
    assert world.condition("pool", "SpecChangeRefused") == {}
    assert world.errors() == [] and world.forbidden() == []


async def test_kubectl_scale_maps_through_the_crd_scale_subresource(
    world: World, operator: Operator
) -> None:
    # Explicit replicas: kube-apiserver fills the CRD's default (1), the emulator does not.
    await world.create_job(sample(name="hpa", rollout__replicas=1))
    await run_to_running(world, "hpa")
    await eventually(lambda: world.status("hpa").get("rolloutReplicas") == 1)
    generation = world.get("agpojobs", "hpa")["metadata"]["generation"]

    # What an HPA reads: autoscaling/v1 Scale from spec.rollout.replicas and the status.
    scale = await world.http("GET", scale_path("hpa"))
    assert scale["apiVersion"] == "autoscaling/v1" and scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 1}
    assert scale["status"] == {"replicas": 1, "selector": world.status("hpa")["rolloutSelector"]}
    # The selector selects exactly the job's vLLM pods (what an HPA averages metrics over).
    match = dict(part.split("=") for part in scale["status"]["selector"].split(","))
    sts = world.get("statefulsets", "hpa-rollout")
    assert match == sts["spec"]["selector"]["matchLabels"]
    selected = [p["metadata"]["name"] for p in world.all("pods")
                if match.items() <= p["metadata"]["labels"].items()]  # fmt: skip
    assert selected == ["hpa-rollout-0"]

    # `kubectl scale agpojob/hpa --replicas=2`: a merge patch of the Scale.
    answer = await world.http("PATCH", scale_path("hpa"), {"spec": {"replicas": 2}}, SCALE)
    assert answer["kind"] == "Scale" and answer["spec"] == {"replicas": 2}
    job = world.get("agpojobs", "hpa")
    assert job["spec"]["rollout"]["replicas"] == 2
    assert job["metadata"]["generation"] == generation + 1  # a spec change like any other
    await eventually(lambda: sts_replicas(world, "hpa") == 2)
    await world.sync_rollout("hpa")
    await eventually(lambda: world.status("hpa").get("rolloutReplicas") == 2)
    scale = await world.http("GET", scale_path("hpa"))
    assert scale["spec"] == {"replicas": 2} and scale["status"]["replicas"] == 2
    await eventually(lambda: world.status("hpa").get("observedGeneration") == generation + 1)
    assert world.condition("hpa", "SpecChangeRefused") == {}
    assert world.errors() == [] and world.forbidden() == []


async def test_weight_sync_degraded_follows_the_trainers_lagging_servers(
    world: World, operator: Operator
) -> None:
    await world.create_job(sample(name="lag", rollout__replicas=2))
    await run_to_running(world, "lag")
    trainer = trainer_identity(world, "lag")
    world.set_progress("lag", step=1, laggingServers=[])
    await eventually(lambda: world.condition("lag", "WeightSyncDegraded").get("reason")
                     == "AllServersServing")  # fmt: skip

    server = "http://10.244.0.12:8000"
    world.set_progress("lag", step=2, servingServers=1, laggingServers=[server])
    cond = await eventually(
        lambda: (c := world.condition("lag", "WeightSyncDegraded")).get("status") == "True" and c
    )
    assert cond["reason"] == "ServersLagging" and server in cond["message"]
    # More reconciles with the same lagging server (the step moves on): no second Warning.
    world.set_progress("lag", step=4, servingServers=1, laggingServers=[server])
    await eventually(lambda: world.status("lag").get("step") == 4)
    warnings = [e for e in world.events("lag") if e["reason"] == "ServersLagging"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert server in warnings[0]["message"]
    assert world.status("lag")["phase"] == "Running"

    world.set_progress("lag", step=5, servingServers=2, laggingServers=[])
    await eventually(lambda: world.condition("lag", "WeightSyncDegraded").get("status") == "False")
    assert world.condition("lag", "WeightSyncDegraded")["reason"] == "AllServersServing"
    await eventually(lambda: "AllServersServing" in world.reasons("lag"))
    assert len([e for e in world.events("lag") if e["reason"] == "ServersLagging"]) == 1
    assert world.status("lag")["phase"] == "Running" and world.status("lag")["restarts"] == 0
    assert trainer_identity(world, "lag") == trainer
    assert world.errors() == [] and world.forbidden() == []


async def test_a_gang_job_refuses_a_replicas_change(world: World, operator: Operator) -> None:
    await world.create_job(sample(name="gang", runPolicy__gang={"mode": "coscheduling"}))
    await run_to_running(world, "gang")
    await world.patch_job("gang", {"spec": {"rollout": {"replicas": 3}}})
    cond = await eventually(lambda: (c := world.condition("gang", "SpecChangeRefused")) and c)
    assert cond["status"] == "True" and cond["reason"] == "ImmutableField"
    assert cond["message"].startswith("spec.rollout.replicas cannot change on this job "
                                      "(running: 1, requested: 3): runPolicy.gang is set")  # fmt: skip
    assert (
        "\n" not in cond["message"] and "rollout.replicas" not in cond["message"].split("only")[1]
    )
    await eventually(lambda: "ImmutableField" in world.reasons("gang"))
    assert sts_replicas(world, "gang") == 1 and world.status("gang")["phase"] == "Running"
    assert "RolloutScaled" not in world.reasons("gang")
    assert [s for s in world.operator_requests() if s.request.subresource == "scale"] == []
    # PodGroupUnavailable: this emulator serves no scheduling.x-k8s.io API (test_gang).
    assert [e for e in world.errors() if "podgroups" not in e] == [] and world.forbidden() == []
