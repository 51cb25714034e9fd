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

import kmock
import kubernetes_validate
import pytest
import yaml
from test_gang import K8S_VERSION

from agpo_api import AGPOJobSpec, parse_job
from agpo_operator.actions import CreateRollout, DeleteRollout, ScaleRollout
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
def test_replicas_may_change_and_a_gang_job_not_below_its_gang() -> None:
    assert immutable_changes(spec(), spec(rollout__replicas=3)) == []
    assert effective_spec(spec(), spec(rollout__replicas=3)).rollout.replicas == 3

    # A gang job: above the servers its gang was admitted with (2 here), both ways.
    gang = {"runPolicy__gang": {"mode": "coscheduling"}}
    created = spec(**gang, rollout__replicas=2)
    for replicas in (2, 3, 7):
        assert immutable_changes(created, spec(**gang, rollout__replicas=replicas)) == []
        assert effective_spec(created, spec(**gang, rollout__replicas=replicas)).rollout.replicas \
            == replicas  # fmt: skip
    # Below it: refused in one line naming the field, the minimum and why; the gang stays.
    [line] = immutable_changes(created, spec(**gang, rollout__replicas=1))
    assert line == (
        "spec.rollout.replicas cannot be below 2 on this job (requested: 1): runPolicy.gang is "
        "set and the gang was admitted with 2 vLLM servers, which stay while the job runs; only "
        "servers above 2 come and go, each admitted alone"
    )
    assert effective_spec(created, spec(**gang, rollout__replicas=1)).rollout.replicas == 2

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


def extra(replicas: int, ready: int | None = None) -> dict[str, Any]:
    """A gang job's StatefulSet of the servers above its gang."""
    out = sts(replicas, ready)
    out["metadata"] = {"name": "j-rollout-x", "uid": "extra-uid"}
    return out


KUEUE = {"runPolicy__gang": {"mode": "kueue"}, "runPolicy__queueName": "q"}


def test_a_gang_job_scaled_above_its_gang_gets_a_second_statefulset() -> None:
    up = decide(running(spec(**KUEUE, rollout__replicas=4), statefulset=sts(2),
                        applied_replicas=2))  # fmt: skip
    assert up.actions == [CreateRollout(("StatefulSet/j-rollout-x",))]
    assert [(e.type, e.message) for e in up.events] == [("Normal", "rollout scaled from 2 to 4 "
            "servers (2 above the gang's 2, each admitted on its own)")]  # fmt: skip
    assert up.status["phase"] == "Running"

    # Once there, the extra StatefulSet is scaled, never the gang's; status counts both.
    both = running(spec(**KUEUE, rollout__replicas=3), statefulset=sts(2, ready=2),
                   extra_statefulset=extra(2, ready=2), applied_replicas=2)  # fmt: skip
    d = decide(both)
    assert d.actions == [ScaleRollout(1, extra=True)]
    assert d.status["rolloutReplicas"] == 4
    down = dataclasses.replace(both, spec=spec(**KUEUE, rollout__replicas=2))
    assert decide(down).actions == [ScaleRollout(0, extra=True)]
    settled = dataclasses.replace(down, extra_statefulset=extra(0))
    assert decide(settled).actions == []
    # Someone scaled the gang's StatefulSet: back to the gang's size (level-based).
    assert decide(dataclasses.replace(settled, statefulset=sts(3))).actions == [ScaleRollout(2)]
    # Without the job's ConfigMap the gang's StatefulSet (never scaled) says the minimum.
    lost = dataclasses.replace(
        settled, applied_replicas=None, spec=spec(**KUEUE, rollout__replicas=5)
    )
    assert decide(lost).actions == [ScaleRollout(3, extra=True)]
    # Suspend (and a job's end) removes both StatefulSets.
    paused = dataclasses.replace(both, spec=spec(**KUEUE, rollout__replicas=3,
                                                 runPolicy__suspend=True))  # fmt: skip
    assert DeleteRollout(main=True, extra=True) in decide(paused).actions


def test_a_job_without_a_gang_scales_its_one_statefulset() -> None:
    d = decide(running(spec(rollout__replicas=4), applied_replicas=1))
    assert d.actions == [ScaleRollout(4)]
    assert [e.message for e in d.events] == ["rollout scaled from 1 to 4 servers"]


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


STRICT_SKIP = {"AGPOJob", "Event", "PodMonitor", "PodGroup"}  # CRDs (test_gang), kopf's


def created_objects_valid(world: World) -> None:
    """Every object the operator created validates strictly against Kubernetes 1.33."""
    for served in world.creates_all():
        body = served.request.data or {}
        if body.get("kind") in STRICT_SKIP:
            continue
        try:
            kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:  # pragma: no cover - message
            pytest.fail(f"{body.get('kind')}/{body['metadata']['name']}: {err.message}")


GROUP_KEYS = {"kueue.x-k8s.io/pod-group-name", "scheduling.x-k8s.io/pod-group"}


def pod_meta(world: World, name: str) -> dict[str, Any]:
    return (world.get("pods", name) or {})["metadata"]


async def scale_gang(
    world: World, name: str, first: list[str]
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """From the gang's 2 servers to 4, back to 2, then 1 (refused); the gang's StatefulSet and
    the trainer untouched throughout. Returns the extra StatefulSet as it was at 2 servers
    and its pods' labels."""
    gang_sts = world.get("statefulsets", f"{name}-rollout")
    trainer = trainer_identity(world, name)

    await world.http("PATCH", scale_path(name), {"spec": {"replicas": 4}}, SCALE)
    extra = await eventually(lambda: world.get("statefulsets", f"{name}-rollout-x"),
                             what="the extra StatefulSet")  # fmt: skip
    assert extra["spec"]["replicas"] == 2
    extras = await world.sync_rollout(name)
    assert extras == [f"{name}-rollout-x-0", f"{name}-rollout-x-1"]
    extra_labels = [pod_meta(world, pod)["labels"] for pod in extras]
    await eventually(lambda: world.status(name).get("rolloutReplicas") == 4)
    await eventually(lambda: world.condition(name, "RolloutReady").get("message")
                     == "4/4 vLLM servers ready")  # fmt: skip
    assert world.pods(name, "rollout") == sorted([*first, f"{name}-rollout-x-0",
                                                  f"{name}-rollout-x-1"])  # fmt: skip
    scaled = [e["message"] for e in world.events(name) if e["reason"] == "RolloutScaled"]
    assert scaled == [
        "rollout scaled from 2 to 4 servers (2 above the gang's 2, each admitted on its own)"
    ]

    # 4 -> 2: the extra servers go, the gang's stay.
    await world.http("PATCH", scale_path(name), {"spec": {"replicas": 2}}, SCALE)
    await eventually(lambda: world.get("statefulsets", f"{name}-rollout-x")["spec"]["replicas"]
                     == 0, what="the extra StatefulSet at 0")  # fmt: skip
    await world.sync_rollout(name)
    await eventually(lambda: world.status(name).get("rolloutReplicas") == 2)
    assert world.pods(name, "rollout") == first

    # 2 -> 1: below the gang, refused in one line; nothing changes.
    await world.patch_job(name, {"spec": {"rollout": {"replicas": 1}}})
    cond = await eventually(lambda: (c := world.condition(name, "SpecChangeRefused")) and c)
    assert cond["status"] == "True" and cond["reason"] == "ImmutableField"
    assert cond["message"].startswith(
        "spec.rollout.replicas cannot be below 2 on this job (requested: 1): runPolicy.gang is "
        "set and the gang was admitted with 2 vLLM servers"
    )
    assert "\n" not in cond["message"]
    await eventually(lambda: "ImmutableField" in world.reasons(name))
    assert world.get("statefulsets", f"{name}-rollout-x")["spec"]["replicas"] == 0
    assert world.status(name)["phase"] == "Running"

    # The gang's StatefulSet: never scaled, its template (and so its pods) never changed.
    assert world.get("statefulsets", f"{name}-rollout") == gang_sts
    assert [s for s in world.operator_requests() if s.request.subresource == "scale"
            and s.request.name == f"{name}-rollout"] == []  # fmt: skip
    # The trainer: the same Job and pods, created once, never patched, deleted or restarted.
    assert trainer_identity(world, name) == trainer
    assert len(world.creates("jobs")) == 1 and world.deletes("jobs") == []
    assert [s for s in world.operator_requests()
            if s.request.method.value == "PATCH" and s.request.resource.plural == "jobs"] == []  # fmt: skip
    assert world.status(name)["restarts"] == 0
    created_objects_valid(world)
    return extra, extra_labels


async def test_a_kueue_gang_scales_above_its_gang_with_pods_admitted_alone(
    world: World, operator: Operator
) -> None:
    kueue = {"runPolicy__gang": {"mode": "kueue"}, "runPolicy__queueName": "gpu-queue"}
    await world.create_job(sample(name="kg", rollout__replicas=2, **kueue))
    await run_to_running(world, "kg")
    first = world.pods("kg", "rollout")
    assert first == ["kg-rollout-0", "kg-rollout-1"]
    assert pod_meta(world, "kg-rollout-0")["labels"]["kueue.x-k8s.io/pod-group-name"] == "kg-gang"

    extra, extra_labels = await scale_gang(world, "kg", first)
    assert extra["spec"]["template"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] \
        == "gpu-queue"  # fmt: skip
    assert "kueue.x-k8s.io/queue-name" not in extra["metadata"]["labels"]
    # The extra pods as they ran: the queue label, no group, no count (Kueue admits each alone).
    for labels in extra_labels:
        assert labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert labels["agpo.dev/role"] == "rollout" and not GROUP_KEYS & labels.keys()
    count = "kueue.x-k8s.io/pod-group-total-count"
    assert count not in extra["spec"]["template"]["metadata"].get("annotations", {})
    # The gang's pods still count the gang as admitted: 1 trainer pod + 2 vLLM servers.
    gang_sts = world.get("statefulsets", "kg-rollout")
    trainer = world.get("jobs", "kg-trainer")
    for template in (gang_sts["spec"]["template"], trainer["spec"]["template"]):
        assert template["metadata"]["annotations"][count] == "3"
    assert world.errors() == [] and world.forbidden() == []


async def test_a_coscheduling_gang_scales_outside_its_pod_group_and_suspends_whole(
    world: World, operator: Operator
) -> None:
    world.cluster.resources["scheduling.x-k8s.io/v1alpha1/podgroups"] = kmock.ResourceInfo(
        kind="PodGroup", namespaced=True, verbs={"get", "create"}
    )
    operator.memo.agpo._groups = None  # forget the cached discovery (re-read every 5 min)
    cosched = {"runPolicy__gang": {"mode": "coscheduling"}}
    await world.create_job(sample(name="cg", rollout__replicas=2, **cosched))
    group = await eventually(lambda: world.get("podgroups", "cg-gang"))
    await run_to_running(world, "cg")
    first = world.pods("cg", "rollout")

    await world.http("PATCH", scale_path("cg"), {"spec": {"replicas": 3}}, SCALE)
    await eventually(lambda: world.get("statefulsets", "cg-rollout-x"), what="extra servers")
    assert await world.sync_rollout("cg") == ["cg-rollout-x-0"]
    labels = pod_meta(world, "cg-rollout-x-0")["labels"]
    assert labels["agpo.dev/role"] == "rollout" and not GROUP_KEYS & labels.keys()
    assert pod_meta(world, "cg-rollout-0")["labels"]["scheduling.x-k8s.io/pod-group"] == "cg-gang"
    await eventually(lambda: world.status("cg").get("rolloutReplicas") == 3)
    assert world.get("podgroups", "cg-gang") == group  # minMember 3: 1 trainer + 2 servers
    assert group["spec"] == {"minMember": 3}

    # Suspend removes both StatefulSets; resume brings back the gang's 2 and the extra 1.
    await world.patch_job("cg", {"spec": {"runPolicy": {"suspend": True}}})
    await eventually(lambda: world.get("statefulsets", "cg-rollout") is None
                     and world.get("statefulsets", "cg-rollout-x") is None,
                     what="both StatefulSets removed")  # fmt: skip
    await eventually(lambda: world.status("cg").get("phase") == "Suspended")
    await world.patch_job("cg", {"spec": {"runPolicy": {"suspend": False}}})
    gang_sts = await eventually(lambda: world.get("statefulsets", "cg-rollout"))
    again = await eventually(lambda: world.get("statefulsets", "cg-rollout-x"))
    assert gang_sts["spec"]["replicas"] == 2 and again["spec"]["replicas"] == 1
    await eventually(lambda: world.get("jobs", "cg-trainer"), what="the trainer Job again")
    assert world.get("podgroups", "cg-gang") == group
    assert world.pods("cg", "rollout") == []  # the emulator's controller: nothing yet
    assert first == ["cg-rollout-0", "cg-rollout-1"]
    created_objects_valid(world)
    assert world.errors() == [] and world.forbidden() == []
