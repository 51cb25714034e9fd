"""Gang scheduling with scheduler-plugins' coscheduling: one ``PodGroup`` per job whose
``minMember`` is every pod (trainer and rollout), so the scheduler binds all of them or none.

The pods join it by the label ``scheduling.x-k8s.io/pod-group`` and are scheduled by
``runPolicy.schedulerName`` (default ``scheduler-plugins-scheduler``); both are set in the pod
templates (:func:`~agpo_operator.builders.common.gang_metadata`). Kueue's plain-pod group needs
no object of its own: labels and an annotation on every pod. docs/operate.md, "Gang admission".
The API is scheduler-plugins' ``scheduling.x-k8s.io/v1alpha1`` (v0.33.x for Kubernetes 1.33:
``apis/scheduling/v1alpha1/types.go``); where it is not installed the operator creates no
PodGroup and says so in a Warning.
"""

from __future__ import annotations

from agpo_api import AGPOJob, AGPOJobSpec
from agpo_api.vocabulary import Reason
from agpo_operator.builders.child import READ_BACK, Child, Creation, Grant, Kind, OptionalApi
from agpo_operator.builders.common import BuildOptions, Names, Obj, gang_size, metadata

PODGROUP_API_GROUP = "scheduling.x-k8s.io"
POD_GROUP_KIND = Kind(f"{PODGROUP_API_GROUP}/v1alpha1", "PodGroup", "podgroups")


def build_pod_group(
    job: AGPOJob, n: Names, options: BuildOptions, creation: Creation
) -> Obj | None:
    """The job's PodGroup under ``runPolicy.gang.mode: coscheduling``, else None; its
    minMember is the gang as admitted (vLLM servers a scale-up adds are not members)."""
    gang = job.spec.run_policy.gang
    if gang is None or gang.mode != "coscheduling":
        return None
    spec: Obj = {"minMember": gang_size(job, creation.gang_replicas)}
    if gang.schedule_timeout_seconds is not None:
        spec["scheduleTimeoutSeconds"] = gang.schedule_timeout_seconds
    return {
        "apiVersion": POD_GROUP_KIND.api_version,
        "kind": POD_GROUP_KIND.kind,
        "metadata": metadata(n, n.gang, "gang"),
        "spec": spec,
    }


def _no_coscheduling(spec: AGPOJobSpec, n: Names) -> str:
    return (
        "spec.runPolicy.gang.mode is coscheduling but the scheduling.x-k8s.io API "
        "(scheduler-plugins) is not installed: no PodGroup is created, and the pods, labelled "
        f"for PodGroup {n.gang}, wait for a scheduler that knows it; install scheduler-plugins "
        "or remove runPolicy.gang"
    )


POD_GROUP = Child(
    kind=POD_GROUP_KIND,
    build=build_pod_group,
    name=lambda n: n.gang,
    grants=(
        Grant(("create",), "the coscheduling PodGroup of every pod (runPolicy.gang.mode "
              "coscheduling)"),
        READ_BACK,
    ),
    requires=OptionalApi(PODGROUP_API_GROUP, Reason.POD_GROUP_UNAVAILABLE, _no_coscheduling),
)  # fmt: skip
