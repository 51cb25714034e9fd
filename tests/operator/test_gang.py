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
from agpo_operator.builders import CHILDREN, BuildOptions, build_children
from agpo_operator.builders.child import Creation, Lifetime
from agpo_operator.rbac import allows, rbac_rules

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


def scaled(replicas: int, admitted: int, name: str = "qm", **run_policy: Any,
           ) -> dict[tuple[str, str], dict[str, Any]]:  # fmt: skip
    """The children the operator builds for the qwen-math-gpu sample whose gang was admitted
    with ``admitted`` vLLM servers and whose spec now asks for ``replicas``."""
    changes = {f"runPolicy__{k}": v for k, v in run_policy.items()}
    manifest = sample("qwen-math-gpu", rollout__replicas=replicas, **changes)
    job = parse_job({**manifest, "metadata": {"name": name}})
    creation = Creation(gang_replicas=admitted)
    return {(o["kind"], o["metadata"]["name"]): o
            for lifetime in Lifetime
            for _, o in CHILDREN.build(lifetime, job, NS, OPTIONS, creation)}  # fmt: skip


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


# ---------------------------------------------------------------- a scaled gang (elastic pool)
GROUP_KEYS = {"kueue.x-k8s.io/pod-group-name", "scheduling.x-k8s.io/pod-group"}


def test_servers_above_a_kueue_gang_are_plain_pods_in_a_second_statefulset() -> None:
    """2 trainer pods + 2 vLLM servers admitted as one group, scaled to 4 servers: the gang's
    objects are what they were at creation, the 2 servers above it a second StatefulSet whose
    pods Kueue admits one by one (the queue label, no group label or count)."""
    created, now = scaled(2, 2, gang={"mode": "kueue"}), scaled(4, 2, gang={"mode": "kueue"})
    strictly_valid(now)
    assert ("StatefulSet", "qm-rollout-x") not in created  # created when first needed
    assert now.keys() - created.keys() == {("StatefulSet", "qm-rollout-x")}
    for key in created:  # the gang, its Services, policies and job file: unchanged
        assert now[key] == created[key], key
    extra = now[("StatefulSet", "qm-rollout-x")]
    gang = now[("StatefulSet", "qm-rollout")]
    assert extra["spec"]["replicas"] == 2 and gang["spec"]["replicas"] == 2
    meta = extra["spec"]["template"]["metadata"]
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert not GROUP_KEYS & meta["labels"].keys()
    assert "kueue.x-k8s.io/pod-group-total-count" not in meta.get("annotations", {})
    # the same role labels as the gang's servers: the Service, the NetworkPolicies and the
    # operator's rollout-pod checks select them; their own selector keeps the two apart
    role = {"agpo.dev/job": "qm", "agpo.dev/role": "rollout"}
    assert role.items() <= meta["labels"].items()
    assert now[("Service", "qm-rollout")]["spec"]["selector"] == role
    assert extra["spec"]["selector"]["matchLabels"] == {**role, "agpo.dev/pool": "extra"}
    assert extra["spec"]["serviceName"] == "qm-rollout"
    assert extra["spec"]["template"]["spec"] == gang["spec"]["template"]["spec"]
    # no queue label on the StatefulSet itself: Kueue would make its pods a group of their own
    assert "kueue.x-k8s.io/queue-name" not in extra["metadata"]["labels"]
    # scaled back to the gang's 2: no extra servers
    assert ("StatefulSet", "qm-rollout-x") not in scaled(2, 2, gang={"mode": "kueue"})


def test_servers_above_a_coscheduling_gang_are_in_no_pod_group() -> None:
    gang = {"mode": "coscheduling"}
    created, now = scaled(2, 2, gang=gang, queueName=None), scaled(5, 2, gang=gang, queueName=None)
    strictly_valid(now)
    assert now[("PodGroup", "qm-gang")] == created[("PodGroup", "qm-gang")]
    assert now[("PodGroup", "qm-gang")]["spec"] == {"minMember": 4}
    assert now[("StatefulSet", "qm-rollout")] == created[("StatefulSet", "qm-rollout")]
    extra = now[("StatefulSet", "qm-rollout-x")]
    assert extra["spec"]["replicas"] == 3
    template = extra["spec"]["template"]
    assert not GROUP_KEYS & template["metadata"]["labels"].keys()
    assert "kueue.x-k8s.io/queue-name" not in template["metadata"]["labels"]
    # still scheduler-plugins' scheduler: it schedules a pod of no PodGroup like any pod
    assert template["spec"]["schedulerName"] == "scheduler-plugins-scheduler"


def test_the_extra_statefulset_name_fits_the_longest_job_name() -> None:
    """A StatefulSet's name goes into its pods' controller-revision-hash label (name, '-',
    a hash of up to 10 characters; a label value is at most 63): at most 52 characters."""
    longest = "j" * 40  # MAX_JOB_NAME_LENGTH
    objs = scaled(3, 2, name=longest, gang={"mode": "kueue"})
    extra = objs[("StatefulSet", f"{longest}-rollout-x")]
    assert len(extra["metadata"]["name"]) <= 52
    strictly_valid(objs)


def test_the_extra_statefulset_rbac_is_the_statefulsets_rule() -> None:
    """Generated from the descriptors: no verb beyond the gang's StatefulSet's (create, list,
    delete, and patch on the scale subresource only)."""
    rules = rbac_rules()
    assert [r for r in rules if r["resources"] == ["statefulsets"]] == [
        {"apiGroups": ["apps"], "resources": ["statefulsets"],
         "verbs": ["list", "create", "delete"]}
    ]  # fmt: skip
    assert allows(rules, "apps", "statefulsets/scale", "patch")
    assert not allows(rules, "apps", "statefulsets", "patch")
