"""Trainer: ``nodes`` torchrun pods as an Indexed Job + headless Service.

Pod ``i`` gets hostname ``<job>-trainer-i`` (Indexed Job) in the Service's subdomain, so rank 0
is ``<job>-trainer-0.<job>-trainer``: the torchrun master and the weight-sync rendezvous.
The rendezvous environment follows Kubeflow's PyTorchJob (``MASTER_*``, ``PET_*``).
The Job's ``backoffLimit`` is 0: restarts are the operator's (the whole group restarts and
resumes from its newest checkpoint), counted in ``status.restarts``.
"""

from __future__ import annotations

from agpo_api import AGPOJob
from agpo_api.layout import (
    CHECKPOINTS_DIR,
    DATA_DIR,
    JOB_FILE,
    RENDEZVOUS_PORT,
    TINY_MODEL,
    TOKEN_KEY,
)
from agpo_operator.builders.common import (
    ATTEMPT_LABEL,
    COMPLETION_INDEX,
    BuildOptions,
    Names,
    Obj,
    common_mounts,
    container_image_fields,
    container_security_context,
    env_secret,
    env_value,
    hf_token_env,
    job_file_volume,
    labels,
    merge_env,
    metadata,
    model_path,
    model_volumes,
    pod_security_context,
    resources,
    scheduling,
    selector_labels,
    shm_volume,
    workload_labels,
)

RESERVED_ENV = frozenset(
    {
        "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK",
        "PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT",
        "AGPO_JOB_FILE", "AGPO_ROLLOUT_URLS", "AGPO_ROLLOUT_TOKEN", "AGPO_CHECKPOINT_DIR",
        "AGPO_WEIGHT_SYNC_HOST", "AGPO_WEIGHT_SYNC_PORT", "AGPO_METRICS_PORT",
        "AGPO_MODEL_PATH", "AGPO_DATASET_PATH", "HF_TOKEN",
    }
)  # fmt: skip

TORCHRUN = [
    "torchrun",
    "--nnodes=$(PET_NNODES)",
    "--nproc-per-node=$(PET_NPROC_PER_NODE)",
    "--node-rank=$(PET_NODE_RANK)",
    "--master-addr=$(PET_MASTER_ADDR)",
    "--master-port=$(PET_MASTER_PORT)",
    "-m",
    "agpo_trainer",
    "--job",
    JOB_FILE,
]


def checkpoint_dir(job: AGPOJob, n: Names) -> str:
    return f"{CHECKPOINTS_DIR}/{(job.spec.training.checkpoint.path or n.job).strip('/')}"


def dataset_path(job: AGPOJob) -> str | None:
    """The dataset file inside trainer pods when it lives on a PVC (mounted at /data)."""
    file = job.spec.dataset.source.file
    if file is None or not file.pvc:
        return None
    return f"{DATA_DIR}/{(file.sub_path or '').strip('/')}"


def rollout_urls(job: AGPOJob, n: Names) -> str:
    return ",".join(n.rollout_url(i) for i in range(job.spec.rollout.replicas))


def trainer_env(job: AGPOJob, n: Names) -> list[Obj]:
    trainer = job.spec.trainer
    node_rank = {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}
    ours: list[Obj] = [
        env_value("MASTER_ADDR", n.master_host),
        env_value("MASTER_PORT", RENDEZVOUS_PORT),
        env_value("WORLD_SIZE", trainer.nodes * trainer.procs_per_node),
        {"name": "RANK", "valueFrom": node_rank},
        env_value("PET_NNODES", trainer.nodes),
        env_value("PET_NPROC_PER_NODE", trainer.procs_per_node),
        {"name": "PET_NODE_RANK", "valueFrom": node_rank},
        env_value("PET_MASTER_ADDR", n.master_host),
        env_value("PET_MASTER_PORT", RENDEZVOUS_PORT),
        env_value("PYTHONUNBUFFERED", 1),
        env_value("AGPO_JOB_FILE", JOB_FILE),
        env_value("AGPO_ROLLOUT_URLS", rollout_urls(job, n)),
        env_secret("AGPO_ROLLOUT_TOKEN", n.token_secret, TOKEN_KEY),
        env_value("AGPO_CHECKPOINT_DIR", checkpoint_dir(job, n)),
        env_value("AGPO_WEIGHT_SYNC_HOST", f"{n.master_host}.{n.namespace}.svc"),
        env_value("AGPO_WEIGHT_SYNC_PORT", job.spec.rollout.weight_sync.port),
        env_value("AGPO_METRICS_PORT", job.spec.metrics.port),
        *hf_token_env(job),
    ]
    if job.spec.model.name != TINY_MODEL or job.spec.model.source is not None:
        ours.append(env_value("AGPO_MODEL_PATH", model_path(job)))
    data = dataset_path(job)
    if data is not None:
        ours.append(env_value("AGPO_DATASET_PATH", data))
    return merge_env(ours, [e.to_dict() for e in trainer.env], RESERVED_ENV)


def _volumes(job: AGPOJob) -> tuple[list[Obj], list[Obj]]:
    """Checkpoints (PVC, else an emptyDir that dies with the pod), model and dataset PVCs."""
    ckpt = job.spec.training.checkpoint
    ckpt_source: Obj = (
        {"persistentVolumeClaim": {"claimName": ckpt.pvc}} if ckpt.pvc else {"emptyDir": {}}
    )
    volumes: list[Obj] = [{"name": "checkpoints", **ckpt_source}]
    mounts: list[Obj] = [{"name": "checkpoints", "mountPath": CHECKPOINTS_DIR}]
    model_vols, model_mounts = model_volumes(job)
    volumes += model_vols
    mounts += model_mounts
    file = job.spec.dataset.source.file
    if file is not None and file.pvc:
        volumes.append(
            {"name": "data", "persistentVolumeClaim": {"claimName": file.pvc, "readOnly": True}}
        )
        mounts.append({"name": "data", "mountPath": DATA_DIR, "readOnly": True})
    return volumes, mounts


def trainer_pod_spec(job: AGPOJob, n: Names, options: BuildOptions) -> Obj:
    trainer = job.spec.trainer
    volumes, mounts = _volumes(job)
    ports = [
        {"name": "metrics", "containerPort": job.spec.metrics.port, "protocol": "TCP"},
        {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"},
        {
            "name": "weight-sync",
            "containerPort": job.spec.rollout.weight_sync.port,
            "protocol": "TCP",
        },
    ]
    container: Obj = {
        "name": "trainer",
        **container_image_fields(trainer.image, options.trainer_image, options),
        "command": list(TORCHRUN),
        "env": trainer_env(job, n),
        "ports": ports,
        "resources": resources(trainer.resources, trainer.gpus_per_node),
        "securityContext": container_security_context(),
        "volumeMounts": [*common_mounts(), *mounts],
    }
    return {
        "subdomain": n.trainer,
        "restartPolicy": "Never",
        "serviceAccountName": n.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": pod_security_context(),
        **scheduling(job, trainer.node_selector, trainer.tolerations),
        "containers": [container],
        "volumes": [shm_volume(), job_file_volume(n), *volumes],
    }


def build_trainer_service(job: AGPOJob, n: Names, options: BuildOptions) -> Obj:
    """Headless Service: the subdomain of the trainer pods' hostnames (rank 0 = master)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(n, n.trainer, "trainer"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(n.job, "trainer"),
            "ports": [
                {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": "rendezvous", "protocol": "TCP"},
                {"name": "weight-sync", "port": job.spec.rollout.weight_sync.port, "targetPort": "weight-sync", "protocol": "TCP"},
                {"name": "metrics", "port": job.spec.metrics.port, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }  # fmt: skip


def build_trainer_job(job: AGPOJob, n: Names, options: BuildOptions, attempt: int = 0) -> Obj:
    """The torchrun group of one attempt (``agpo.dev/attempt``; a restart is a new Job)."""
    nodes = job.spec.trainer.nodes
    meta = metadata(n, n.trainer, "trainer")
    meta["labels"] = {**workload_labels(job, n, "trainer"), ATTEMPT_LABEL: str(attempt)}
    pod_labels = {**labels(n.job, "trainer"), ATTEMPT_LABEL: str(attempt)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            "backoffLimit": 0,
            "podReplacementPolicy": "Failed",
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": trainer_pod_spec(job, n, options),
            },
        },
    }
