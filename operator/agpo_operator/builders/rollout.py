"""Rollout: ``replicas`` vLLM OpenAI servers (StatefulSet + headless Service). The trainer
finds them by resolving the Service's name (every pod's address, ready or not: it probes
them) at each step boundary, so the pool can grow and shrink while the job runs: the operator
scales the StatefulSet to ``spec.rollout.replicas`` and nothing else changes.

A gang job (``runPolicy.gang``) keeps its StatefulSet at the servers its gang was admitted
with (its minimum); the servers above it are a second StatefulSet, ``<job>-rollout-x``, whose
pods carry the same role labels (the Service, the NetworkPolicies and the operator's checks
cover them) and no gang membership: each is admitted on its own."""

from __future__ import annotations

from agpo_api import AGPOJob, AGPOJobSpec
from agpo_api.env import AUTH_ENV, EnvVar
from agpo_api.layout import JOB_FILE, ROLLOUT_PORT, TINY_MODEL_DIR, TOKEN_KEY
from agpo_api.vllm_server import job_server_command, server_env
from agpo_operator.builders.child import (
    SERVICE,
    Child,
    Creation,
    Grant,
    Kind,
    Lifetime,
    created,
)
from agpo_operator.builders.common import (
    BuildOptions,
    Names,
    Obj,
    common_mounts,
    container_image_fields,
    container_security_context,
    env_secret,
    env_value,
    gang_metadata,
    hf_token_env,
    job_file_volume,
    label_selector,
    merge_env,
    metadata,
    pod_security_context,
    pod_template_metadata,
    resources,
    scheduling,
    selector_labels,
    shm_volume,
    solo_metadata,
    workload_labels,
)
from agpo_operator.builders.model import (
    MADE_VOLUME,
    downloads_model,
    model_maker,
    model_path,
    model_volumes,
    pod_annotations,
)

# Variables a job's env cannot override: the contract with the image, and the token check
# (AUTH_ENV: a job must not be able to switch it off). VLLM_CPU_KVCACHE_SPACE stays open.
RESERVED_ENV = frozenset(
    {EnvVar.VLLM_DEV_MODE.value, EnvVar.JOB_FILE.value, EnvVar.HF_TOKEN.value}
    | {name.value for name in AUTH_ENV}
)


def vllm_command(job: AGPOJob) -> list[str]:
    """The vLLM OpenAI server command line (the contract in docs/operator.md).

    The same pure function as ``agpo run`` uses (one source of truth for the flags), so pods
    get what the local runs and the tests exercise: processed log-probs (after temperature,
    what the importance ratio needs), the weight-transfer backend, the token middleware.
    """
    return job_server_command(
        job.spec, model_path(job), port=ROLLOUT_PORT, downloads_model=downloads_model(job)
    )


def rollout_env(job: AGPOJob, n: Names) -> list[Obj]:
    # The pod monitor reads vLLM's own /metrics (throughput, queue) without the token;
    # read-only, and the NetworkPolicy admits only the monitoring namespace to it.
    plain = [
        env_value(name, value)
        for name, value in server_env(
            cpu=job.spec.rollout.gpus_per_replica == 0,
            cpu_kvcache_gib=1,
            allow_metrics_without_token=job.spec.metrics.pod_monitor,
        ).items()
    ]
    # VLLM_SERVER_DEV_MODE has always come first and the optional CPU/metrics variables
    # last, with the token, job file and HF token between: kept so rendered pods do not change.
    ours = [
        *plain[:1],
        env_secret(EnvVar.ROLLOUT_TOKEN, n.token_secret, TOKEN_KEY),
        env_value(EnvVar.JOB_FILE, JOB_FILE),
        *hf_token_env(job),
        *plain[1:],
    ]
    user = [e.to_dict() for e in job.spec.rollout.env]
    return merge_env(ours, user, RESERVED_ENV)


def _model_init(job: AGPOJob, options: BuildOptions, command: list[str], mounts: list[Obj]) -> Obj:
    """Makes the model into the pod's emptyDir before vLLM starts: builtin:tiny built, or a
    GGUF file converted (the trainer makes the same model into its cache)."""
    return {
        "name": "build-model",
        **container_image_fields(job.spec.rollout.image, options.rollout_image, options),
        "command": command,
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": MADE_VOLUME, "mountPath": TINY_MODEL_DIR}, *mounts],
        # A mistake (the extra not in the image, a bad GGUF file) is one line: the pod's reason.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def rollout_pod_spec(job: AGPOJob, n: Names, options: BuildOptions) -> Obj:
    rollout = job.spec.rollout
    volumes, mounts = model_volumes(job)
    init: list[Obj] = []
    maker = model_maker(job)
    if maker is not None:  # vLLM reads the emptyDir; only the maker reads a GGUF file's claim
        init = [_model_init(job, options, maker, mounts)]
        volumes = [*volumes, {"name": MADE_VOLUME, "emptyDir": {}}]
        mounts = [{"name": MADE_VOLUME, "mountPath": TINY_MODEL_DIR, "readOnly": True}]
    container: Obj = {
        "name": "vllm",
        **container_image_fields(rollout.image, options.rollout_image, options),
        "command": vllm_command(job),
        "env": rollout_env(job, n),
        "ports": [{"name": "http", "containerPort": ROLLOUT_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": resources(rollout.resources, rollout.gpus_per_replica),
        "securityContext": container_security_context(),
        "volumeMounts": [*common_mounts(), *mounts],
        # A crashed server's log tail becomes its termination message: the restart's reason.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    spec: Obj = {
        "serviceAccountName": n.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        **scheduling(job, rollout.node_selector, rollout.tolerations),
    }
    if init:
        spec["initContainers"] = init
    spec["containers"] = [container]
    spec["volumes"] = [shm_volume(), job_file_volume(n), *volumes]
    return spec


def rollout_selector(n: Names) -> str:
    """The vLLM pods' label selector as a string (``status.rolloutSelector``: what the CR's
    scale subresource reports, so that an HPA can find the pods)."""
    return label_selector(selector_labels(n.job, "rollout"))


def build_rollout_service(job: AGPOJob, n: Names, options: BuildOptions) -> Obj:
    """Headless Service giving every vLLM pod a stable DNS name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(n, n.rollout, "rollout"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(n.job, "rollout"),
            "ports": [
                {"name": "http", "port": ROLLOUT_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


#: The label that tells the extra servers' StatefulSet its own pods from the gang's: the
#: gang's selector (immutable, ``agpo.dev/job`` + ``agpo.dev/role``) matches them too, but a
#: StatefulSet adopts only pods without a controller, and every pod here has its own.
POOL_LABEL = "agpo.dev/pool"


def pool_sizes(spec: AGPOJobSpec, gang_replicas: int | None) -> tuple[int, int]:
    """The servers of the job's StatefulSet and of the extra one: all of
    ``spec.rollout.replicas`` in the first without a gang; with one, the gang's own
    (``gang_replicas``, None: the spec's, as at creation) and the rest above it."""
    wanted = spec.rollout.replicas
    if spec.run_policy.gang is None or gang_replicas is None:
        return wanted, 0
    return gang_replicas, max(wanted - gang_replicas, 0)


def _statefulset(job: AGPOJob, n: Names, options: BuildOptions, name: str, replicas: int,
                 select: dict[str, str], membership: Obj) -> Obj:  # fmt: skip
    meta = metadata(n, name, "rollout")
    meta["labels"] = workload_labels(job, n, "rollout")
    pod_labels = {**metadata(n, n.rollout, "rollout")["labels"], **select}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "serviceName": n.rollout,
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": select},
            "template": {
                "metadata": pod_template_metadata(
                    job, n, pod_labels, pod_annotations(job), membership
                ),
                "spec": rollout_pod_spec(job, n, options),
            },
        },
    }


def build_rollout_statefulset(
    job: AGPOJob, n: Names, options: BuildOptions, creation: Creation
) -> Obj:
    """The vLLM servers (a gang job's: those of its gang); pods start in parallel (each takes
    minutes to load a model)."""
    replicas, _ = pool_sizes(job.spec, creation.gang_replicas)
    membership = gang_metadata(job, n, creation.gang_replicas)
    return _statefulset(job, n, options, n.rollout, replicas, selector_labels(n.job, "rollout"),
                        membership)  # fmt: skip


def build_extra_statefulset(
    job: AGPOJob, n: Names, options: BuildOptions, creation: Creation
) -> Obj | None:
    """A gang job's vLLM servers above its gang (None while there are none): the same pods
    under the same Service, outside the gang (:func:`~.common.solo_metadata`)."""
    _, extra = pool_sizes(job.spec, creation.gang_replicas)
    if extra == 0:
        return None
    select = {**selector_labels(n.job, "rollout"), POOL_LABEL: "extra"}
    return _statefulset(job, n, options, n.rollout_extra, extra, select, solo_metadata(job))


ROLLOUT_SERVICE = created(
    SERVICE, build_rollout_service, lambda n: n.rollout, "the vLLM pods' headless Service"
)
STATEFULSET = Kind("apps/v1", "StatefulSet", "statefulsets")
ROLLOUT_STATEFULSET = Child(
    kind=STATEFULSET,
    build=build_rollout_statefulset,
    name=lambda n: n.rollout,
    grants=(
        Grant(("create",), "the vLLM rollout servers"),
        Grant(("list",), "read with the trainer Job and the pods on every pass"),
        Grant(("delete",), "removed while suspended and when finished"),
        Grant(
            ("patch",),
            "scaled to spec.rollout.replicas (kubectl scale, an autoscaler)",
            subresource="scale",
        ),
    ),
    lifetime=Lifetime.ROLLOUT,
)
#: Created when a gang job is first scaled above its gang, then scaled (to 0 as well); it goes
#: with the other StatefulSet (suspend, finish, cleanPodPolicy, the job's deletion).
ROLLOUT_EXTRA = Child(
    kind=STATEFULSET,
    build=build_extra_statefulset,
    name=lambda n: n.rollout_extra,
    grants=(
        Grant(("create",), "a gang job's vLLM servers above its gang, each admitted alone"),
        Grant(("list",), "read with the trainer Job and the pods on every pass"),
        Grant(("delete",), "removed while suspended and when finished"),
        Grant(("patch",), "scaled to the servers above the gang's", subresource="scale"),
    ),
    lifetime=Lifetime.ROLLOUT,
)
