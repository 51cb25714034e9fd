"""What every child object shares: names, labels, owner references, pod hardening, paths.

Pure functions of an :class:`~agpo_api.AGPOJob` and :class:`BuildOptions`; no I/O,
no kopf. The names here are the contract with the trainer and rollout images (see
``docs/operator.md``): change them only together with those images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agpo_api import API_VERSION, KIND, AGPOJob
from agpo_api.env import EnvVar
from agpo_api.layout import (
    JOB_FILE_DIR,
    JOB_FILE_KEY,
    ROLLOUT_PORT,
)

Obj = dict[str, Any]

# Label keys and values.
JOB_LABEL = "agpo.dev/job"
ROLE_LABEL = "agpo.dev/role"
ATTEMPT_LABEL = "agpo.dev/attempt"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Kueue's plain-pod groups (pkg/controller/jobs/pod/constants, Kueue >= 0.6; docs/operate.md).
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"
# scheduler-plugins coscheduling (>= v0.25.7; v0.33.x for Kubernetes 1.33).
COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
MANAGED_BY = "agpo-operator"
PART_OF = "agpo"

RUN_AS_USER = 1000


@dataclass(frozen=True)
class BuildOptions:
    """Operator-wide settings that shape children (from :class:`agpo_operator.config.Config`)."""

    trainer_image: str = "ghcr.io/agpo-dev/agpo-trainer:latest"
    rollout_image: str = "ghcr.io/agpo-dev/agpo-rollout:latest"
    image_pull_policy: str | None = None
    operator_namespace: str = "agpo-system"
    monitoring_namespace: str | None = None
    ephemeral_ports: tuple[int, int] | None = (32768, 60999)


# --------------------------------------------------------------------------- names
@dataclass(frozen=True)
class Names:
    """Every child's name, derived from the job's name (at most 40 characters)."""

    job: str
    namespace: str

    @property
    def spec_configmap(self) -> str:
        return f"{self.job}-spec"

    @property
    def token_secret(self) -> str:
        return f"{self.job}-rollout-token"

    @property
    def service_account(self) -> str:
        return f"{self.job}-workload"

    @property
    def rollout(self) -> str:
        return f"{self.job}-rollout"

    @property
    def rollout_extra(self) -> str:
        """The vLLM servers above a gang's own (``-x``, not ``-extra``: a StatefulSet's name
        goes into its pods' ``controller-revision-hash`` label with a 10-character hash, so it
        must stay within 52 characters; 40 + 10 = 50)."""
        return f"{self.job}-rollout-x"

    @property
    def trainer(self) -> str:
        return f"{self.job}-trainer"

    @property
    def metrics(self) -> str:
        return f"{self.job}-trainer-metrics"

    @property
    def checkpoints(self) -> str:
        return f"{self.job}-checkpoints"

    @property
    def gang(self) -> str:
        """The pod group of every pod of the job (Kueue's group name, the PodGroup's name)."""
        return f"{self.job}-gang"

    @property
    def master_host(self) -> str:
        """Rank 0's stable DNS name (Indexed Job hostname + the headless Service subdomain)."""
        return f"{self.trainer}-0.{self.trainer}"

    @property
    def rollout_discovery(self) -> str:
        """Where the trainer finds the vLLM servers: every address of their headless Service
        (``AGPO_ROLLOUT_DISCOVERY``; DNS, so the trainer pods need no API access)."""
        return f"dns://{self.rollout}.{self.namespace}.svc:{ROLLOUT_PORT}"


def names(job: AGPOJob, namespace: str) -> Names:
    if not job.metadata.name:
        raise ValueError("the job has no metadata.name")
    return Names(job=job.metadata.name, namespace=namespace)


# --------------------------------------------------------------------------- metadata
def selector_labels(job: str, role: str) -> dict[str, str]:
    """The labels that select one role's pods of one job (Services, NetworkPolicies)."""
    return {JOB_LABEL: job, ROLE_LABEL: role}


def label_selector(match: Mapping[str, str]) -> str:
    """Equality-based labels as a selector string: ``k1=v1,k2=v2``."""
    return ",".join(f"{k}={v}" for k, v in match.items())


def labels(job: str, role: str) -> dict[str, str]:
    """Every child's labels: the recommended ``app.kubernetes.io/*`` set plus ours."""
    return {
        "app.kubernetes.io/name": PART_OF,
        "app.kubernetes.io/instance": job,
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(job, role),
    }


def metadata(n: Names, name: str, role: str, **extra_labels: str) -> Obj:
    return {
        "name": name,
        "namespace": n.namespace,
        "labels": {**labels(n.job, role), **extra_labels},
    }


def owner_reference(job_name: str, uid: str) -> Obj:
    """The controller reference that makes the AGPOJob own (and garbage-collect) a child."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def adopt(obj: Obj, job_name: str, uid: str) -> Obj:
    """A copy of ``obj`` owned by the job (what ``kopf.adopt`` does, without kopf)."""
    meta = {**obj["metadata"], "ownerReferences": [owner_reference(job_name, uid)]}
    return {**obj, "metadata": meta}


# --------------------------------------------------------------------------- pods
def pod_security_context() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# str(name): an EnvVar member becomes its plain value (the YAML dumper takes only plain str).
def env_value(name: str, value: str | int) -> Obj:
    return {"name": str(name), "value": str(value)}


def env_secret(name: str, secret: str, key: str) -> Obj:
    return {"name": str(name), "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def merge_env(ours: list[Obj], user: list[Obj], reserved: frozenset[str]) -> list[Obj]:
    """Our variables, then the user's; a user variable replaces ours unless it is reserved.

    Reserved names carry the contract with the images and the security token: a job cannot
    override them (such entries are dropped).
    """
    user_by_name = {e["name"]: e for e in user if e["name"] not in reserved}
    merged = [user_by_name.pop(e["name"], e) for e in ours]
    return merged + [e for e in user if e["name"] in user_by_name]


def resources(spec_resources: Any, gpus: int) -> Obj:
    """Pod resources from the spec, with ``nvidia.com/gpu`` set from the GPU count."""
    out: Obj = spec_resources.to_dict() if spec_resources is not None else {}
    limits = dict(out.get("limits", {}))
    requests = dict(out.get("requests", {}))
    limits.pop("nvidia.com/gpu", None)
    requests.pop("nvidia.com/gpu", None)
    if gpus > 0:
        limits["nvidia.com/gpu"] = str(gpus)
        requests["nvidia.com/gpu"] = str(gpus)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def scheduling(job: AGPOJob, node_selector: dict[str, str], tolerations: list[Any]) -> Obj:
    """Scheduler, priority, node selector, tolerations and pull secrets of a pod spec."""
    rp = job.spec.run_policy
    out: Obj = {}
    if rp.pod_scheduler:
        out["schedulerName"] = rp.pod_scheduler
    if rp.priority_class_name:
        out["priorityClassName"] = rp.priority_class_name
    if node_selector:
        out["nodeSelector"] = dict(node_selector)
    if tolerations:
        out["tolerations"] = [t.to_dict() for t in tolerations]
    if job.spec.image_pull_secrets:
        out["imagePullSecrets"] = [s.to_dict() for s in job.spec.image_pull_secrets]
    return out


def workload_labels(job: AGPOJob, n: Names, role: str) -> dict[str, str]:
    """Labels of a workload object (StatefulSet, Job): the child labels plus the Kueue queue,
    unless the pods form a Kueue group (a workload with the queue label would be Kueue's own
    Workload, and its pods would not join the group)."""
    out = labels(n.job, role)
    rp = job.spec.run_policy
    if rp.queue_name and not (rp.gang and rp.gang.mode == "kueue"):
        out[QUEUE_LABEL] = rp.queue_name
    return out


def gang_size(job: AGPOJob, admitted: int | None = None) -> int:
    """Every pod of the job's gang: the trainer pods and the vLLM servers it was admitted with
    (``admitted``; None: the spec's own, as when the job is created). Servers added later are
    not in it (:func:`solo_metadata`)."""
    rollout = job.spec.rollout.replicas if admitted is None else admitted
    return job.spec.trainer.nodes + rollout


def gang_metadata(job: AGPOJob, n: Names, admitted: int | None = None) -> Obj:
    """The labels and annotations that put a pod in the job's gang (empty without one)."""
    rp = job.spec.run_policy
    if rp.gang is None:
        return {"labels": {}, "annotations": {}}
    if rp.gang.mode == "coscheduling":
        return {"labels": {COSCHEDULING_LABEL: n.gang}, "annotations": {}}
    assert rp.queue_name is not None  # the contract's rule: gang kueue needs a queue
    return {
        "labels": {QUEUE_LABEL: rp.queue_name, KUEUE_GROUP_LABEL: n.gang},
        "annotations": {KUEUE_GROUP_COUNT: str(gang_size(job, admitted))},
    }


def solo_metadata(job: AGPOJob) -> Obj:
    """The labels of a vLLM pod outside the gang (one a scale-up added): under Kueue only the
    queue label, so that Kueue admits the pod on its own (a plain pod, its own Workload);
    under coscheduling none, so that the scheduler places it like any pod (docs/operate.md,
    "Gang admission")."""
    rp = job.spec.run_policy
    queued = rp.gang is not None and rp.gang.mode == "kueue" and rp.queue_name
    return {"labels": {QUEUE_LABEL: rp.queue_name} if queued else {}, "annotations": {}}


def pod_template_metadata(
    job: AGPOJob, n: Names, pod_labels: dict[str, str], base: Obj, membership: Obj | None = None
) -> Obj:
    """A pod template's metadata: its labels and ``base``'s annotations, plus ``membership``
    (the gang's, :func:`gang_metadata`, when not given)."""
    gang = gang_metadata(job, n) if membership is None else membership
    annotations = {**(base.get("annotations") or {}), **gang["annotations"]}
    out: Obj = {"labels": {**pod_labels, **gang["labels"]}}
    if annotations:
        out["annotations"] = annotations
    return out


def shm_volume() -> Obj:
    """A RAM-backed /dev/shm: the container runtime's 64 MiB default breaks NCCL."""
    return {"name": "dshm", "emptyDir": {"medium": "Memory"}}


def job_file_volume(n: Names) -> Obj:
    return {
        "name": "job-spec",
        "configMap": {
            "name": n.spec_configmap,
            "items": [{"key": JOB_FILE_KEY, "path": JOB_FILE_KEY}],
        },
    }


def common_mounts() -> list[Obj]:
    return [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "job-spec", "mountPath": JOB_FILE_DIR, "readOnly": True},
    ]


# --------------------------------------------------------------------------- hub token, images
def hf_token_env(job: AGPOJob) -> list[Obj]:
    ref = job.spec.model.hf_token_secret_ref
    return [env_secret(EnvVar.HF_TOKEN, ref.name, ref.key)] if ref is not None else []


def tracking_env(job: AGPOJob) -> list[Obj]:
    """The trackers' credentials (spec.tracking), from the Secrets the spec names, as the
    variables MLflow's and W&B's libraries read."""
    t = job.spec.tracking
    refs = [
        (EnvVar.MLFLOW_TRACKING_TOKEN, t.mlflow.token_secret_ref if t.mlflow else None),
        (EnvVar.WANDB_API_KEY, t.wandb.api_key_secret_ref if t.wandb else None),
    ]
    return [env_secret(name, ref.name, ref.key) for name, ref in refs if ref is not None]


def image(spec_image: str | None, default: str) -> str:
    return spec_image or default


def container_image_fields(spec_image: str | None, default: str, options: BuildOptions) -> Obj:
    out: Obj = {"image": image(spec_image, default)}
    if options.image_pull_policy:
        out["imagePullPolicy"] = options.image_pull_policy
    return out
