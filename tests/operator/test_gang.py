"""Gang admission (runPolicy.gang): every pod of a job, trainer and rollout, in one Kueue
plain-pod group or one scheduler-plugins PodGroup; the objects validate strictly (Kubernetes
1.33 schemas; the PodGroup against the fields of scheduler-plugins' CRD), the RBAC for the
PodGroup comes from its Child, and the real operator creates it on the emulated API server
where the API exists (and says why not where it does not)."""

from __future__ import annotations

from typing import Any

import jsonschema
import kmock
import kubernetes_validate
import pytest
from packaging.version import Version

from agpo_api import parse_job
from agpo_operator.builders import BuildOptions, build_children
from agpo_operator.rbac import rbac_rules

from operator_support import NS, Operator, World, eventually, sample

OPTIONS = BuildOptions(trainer_image="trainer:t", rollout_image="rollout:t")
K8S_VERSION = max(
    (v for v in kubernetes_validate.utils.all_versions() if v.startswith("1.33")), key=Version
)
# The fields of scheduler-plugins' PodGroup (scheduling.x-k8s.io/v1alpha1) we produce, as its
# CRD declares them (config/crd/bases/scheduling.x-k8s.io_podgroups.yaml at v0.33.x):
# minMember int32 >= 1, scheduleTimeoutSeconds int32; kubernetes-validate has no CRD schemas.
INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
PODGROUP_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "scheduling.x-k8s.io/v1alpha1"},
        "kind": {"const": "PodGroup"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["minMember"],
            "properties": {
                "minMember": {**INT32, "minimum": 1},
                "scheduleTimeoutSeconds": INT32,
            },
        },
    },
}


def objects(name: str = "qm", **run_policy: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The qwen-math-gpu sample (2 trainer nodes, 2 vLLM replicas, queue gpu-queue)."""
    changes = {f"runPolicy__{k}": v for k, v in run_policy.items()}
    job = parse_job({**sample("qwen-math-gpu", **changes), "metadata": {"name": name}})
    return {(o["kind"], o["metadata"]["name"]): o for o in build_children(job, NS, OPTIONS)}


def pod_templates(objs: dict[tuple[str, str], Any]) -> list[dict[str, Any]]:
    return [objs[("Job", "qm-trainer")]["spec"]["template"],
            objs[("StatefulSet", "qm-rollout")]["spec"]["template"]]  # fmt: skip


def strictly_valid(objs: dict[tuple[str, str], Any]) -> None:
    for (kind, name), obj in objs.items():
        if kind == "PodGroup":
            jsonschema.validate(obj, PODGROUP_SCHEMA)
        elif kind != "PodMonitor":  # the Prometheus Operator's CRD: tests/operator/test_render
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:  # pragma: no cover - message
                pytest.fail(f"{kind}/{name}: {err.message} at {list(err.path)}")


def test_kueue_puts_every_pod_in_one_group_and_the_workloads_in_none() -> None:
    objs = objects(gang={"mode": "kueue"})
    strictly_valid(objs)
    for template in pod_templates(objs):
        meta = template["metadata"]
        assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert meta["labels"]["kueue.x-k8s.io/pod-group-name"] == "qm-gang"
        # every pod of the job: 2 trainer pods + 2 vLLM servers
        assert meta["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "4"
        assert "scheduling.x-k8s.io/pod-group" not in meta["labels"]
    # a workload with the queue label is Kueue's own Workload, whose pods skip the group
    for key in (("Job", "qm-trainer"), ("StatefulSet", "qm-rollout")):
        assert "kueue.x-k8s.io/queue-name" not in objs[key]["metadata"]["labels"]
    # the vLLM pods start in parallel: ordered start would wait for a gated first pod forever
    assert objs[("StatefulSet", "qm-rollout")]["spec"]["podManagementPolicy"] == "Parallel"
    assert not [k for k in objs if k[0] == "PodGroup"]


def test_without_a_gang_each_workload_is_queued_on_its_own() -> None:
    objs = objects()
    for key in (("Job", "qm-trainer"), ("StatefulSet", "qm-rollout")):
        assert objs[key]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    for template in pod_templates(objs):
        assert "kueue.x-k8s.io/pod-group-name" not in template["metadata"]["labels"]
        assert "schedulerName" not in template["spec"]


def test_coscheduling_makes_a_pod_group_of_every_pod() -> None:
    objs = objects(gang={"mode": "coscheduling", "scheduleTimeoutSeconds": 600}, queueName=None)
    strictly_valid(objs)
    group = objs[("PodGroup", "qm-gang")]
    assert group["spec"] == {"minMember": 4, "scheduleTimeoutSeconds": 600}
    for template in pod_templates(objs):
        assert template["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "qm-gang"
        assert template["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
        assert "kueue.x-k8s.io/pod-group-name" not in template["metadata"]["labels"]
    # a scheduler the spec names wins (a differently named scheduler-plugins deployment)
    named = objects(gang={"mode": "coscheduling"}, schedulerName="gang-scheduler")
    assert {t["spec"]["schedulerName"] for t in pod_templates(named)} == {"gang-scheduler"}
    assert named[("PodGroup", "qm-gang")]["spec"] == {"minMember": 4}


def test_the_pod_group_rbac_is_what_its_child_needs() -> None:
    rules = [r for r in rbac_rules() if "scheduling.x-k8s.io" in r["apiGroups"]]
    assert rules == [
        {"apiGroups": ["scheduling.x-k8s.io"], "resources": ["podgroups"], "verbs": ["get", "create"]}
    ]  # fmt: skip


async def test_the_operator_creates_the_pod_group_where_the_api_exists(
    world: World, operator: Operator
) -> None:
    gang = {"runPolicy__gang": {"mode": "coscheduling"}}
    await world.create_job(sample(name="nogroup", **gang))
    await eventually(lambda: "PodGroupUnavailable" in world.reasons("nogroup"))
    await eventually(lambda: world.get("jobs", "nogroup-trainer"), what="the Job, labelled")
    assert world.creates("podgroups") == []

    world.cluster.resources["scheduling.x-k8s.io/v1alpha1/podgroups"] = kmock.ResourceInfo(
        kind="PodGroup", namespaced=True, verbs={"get", "create"}
    )
    operator.memo.agpo._groups = None  # forget the cached discovery (re-read every 5 min)
    await world.create_job(sample(name="grouped", **gang))
    group = await eventually(lambda: world.get("podgroups", "grouped-gang"))
    assert group["metadata"]["ownerReferences"][0]["name"] == "grouped"
    assert group["spec"] == {"minMember": 2}  # tiny-cpu: 1 trainer pod + 1 vLLM server
    trainer = await eventually(lambda: world.get("jobs", "grouped-trainer"))
    template = trainer["spec"]["template"]
    assert template["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "grouped-gang"
    assert template["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    assert "PodGroupUnavailable" not in world.reasons("grouped")
    assert world.forbidden() == []
