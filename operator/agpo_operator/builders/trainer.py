"""Trainer: ``nodes`` torchrun pods as an Indexed Job + headless Service.

Pod ``i`` gets hostname ``<job>-trainer-i`` (Indexed Job) in the Service's subdomain, so rank 0
is ``<job>-trainer-0.<job>-trainer``: the torchrun master and the weight-sync rendezvous.
The rendezvous environment follows Kubeflow's PyTorchJob (``MASTER_*``, ``PET_*``).
The Job's ``backoffLimit`` is 0: restarts are the operator's (the whole group restarts and
resumes from its newest checkpoint), counted in ``status.restarts``.
"""

from __future__ import annotations

from dataclasses import fields

from agpo_api import AGPOJob
from agpo_api.env import EnvVar, TrainerSettings
from agpo_api.layout import (
    CHECKPOINTS_DIR,
    DATA_DIR,
    EVAL_DATA_DIR,
    JOB_FILE,
    RENDEZVOUS_PORT,
    TOKEN_KEY,
)
from agpo_api.termination import TERMINATION_LOG
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
    gang_metadata,
    hf_token_env,
    job_file_volume,
    labels,
    merge_env,
    metadata,
    pod_security_context,
    pod_template_metadata,
    resources,
    scheduling,
    selector_labels,
    shm_volume,
    tracking_env,
    workload_labels,
)
from agpo_operator.builders.model import (
    model_path,
    model_volumes,
    pod_annotations,
    trainer_makes_model,
)
from agpo_operator.builders.storage import checkpoint_volume_source

# The TrainerSettings the operator sets (the others, e.g. AGPO_CRASH_AFTER_STEP or
# AGPO_MICRO_BATCH_SIZE, are left to the job's env). rollout_urls is not set (the servers are
# discovered) but reserved all the same: a job's env must not point the trainer elsewhere.
OPERATOR_SETTINGS = (
    "rollout_urls", "rollout_discovery", "rollout_token", "checkpoint_dir", "weight_sync_host", "weight_sync_port",
    "metrics_port", "model_path", "dataset_path",
)  # fmt: skip
# torchrun's rendezvous, Kubeflow PyTorchJob style (RANK and PET_NODE_RANK: the pod's index).
TORCHRUN_ENV = (
    EnvVar.MASTER_ADDR, EnvVar.MASTER_PORT, EnvVar.WORLD_SIZE, EnvVar.RANK,
    EnvVar.PET_NNODES, EnvVar.PET_NPROC_PER_NODE, EnvVar.PET_NODE_RANK, EnvVar.PET_MASTER_ADDR,
    EnvVar.PET_MASTER_PORT,
)  # fmt: skip
# Variables a job's env cannot override: everything the operator sets but PYTHONUNBUFFERED.
RESERVED_ENV = frozenset(
    {
        *(name.value for name in TORCHRUN_ENV),
        EnvVar.JOB_FILE.value,
        *(f.metadata["env"].value for f in fields(TrainerSettings) if f.name in OPERATOR_SETTINGS),
        EnvVar.HF_TOKEN.value,
        EnvVar.MLFLOW_TRACKING_TOKEN.value,
        EnvVar.WANDB_API_KEY.value,
    }
)
# Stands for the token in TrainerSettings: pods read it from the job's Secret.
_FROM_SECRET = "<from the Secret>"

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


def torchrun_env(job: AGPOJob, n: Names) -> list[Obj]:
    trainer = job.spec.trainer
    node_rank = {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}
    return [
        env_value(EnvVar.MASTER_ADDR, n.master_host),
        env_value(EnvVar.MASTER_PORT, RENDEZVOUS_PORT),
        env_value(EnvVar.WORLD_SIZE, trainer.nodes * trainer.procs_per_node),
        {"name": EnvVar.RANK.value, "valueFrom": node_rank},
        env_value(EnvVar.PET_NNODES, trainer.nodes),
        env_value(EnvVar.PET_NPROC_PER_NODE, trainer.procs_per_node),
        {"name": EnvVar.PET_NODE_RANK.value, "valueFrom": node_rank},
        env_value(EnvVar.PET_MASTER_ADDR, n.master_host),
        env_value(EnvVar.PET_MASTER_PORT, RENDEZVOUS_PORT),
    ]


def trainer_settings(job: AGPOJob, n: Names) -> TrainerSettings:
    """What the operator tells every trainer pod (the token only as a placeholder)."""
    return TrainerSettings(
        # Not a list of the replicas: the pool may be scaled while the trainer runs, and its
        # pod template must not change for it (a new template would mean a new trainer Job).
        rollout_discovery=n.rollout_discovery,
        rollout_token=_FROM_SECRET,
        checkpoint_dir=checkpoint_dir(job, n),
        weight_sync_host=f"{n.master_host}.{n.namespace}.svc",
        weight_sync_port=job.spec.rollout.weight_sync.port,
        metrics_port=job.spec.metrics.port,
        model_path=None if trainer_makes_model(job) else model_path(job),
        dataset_path=dataset_path(job),
    )


def trainer_env(job: AGPOJob, n: Names) -> list[Obj]:
    token = env_secret(EnvVar.ROLLOUT_TOKEN, n.token_secret, TOKEN_KEY)
    settings = [
        token if name == EnvVar.ROLLOUT_TOKEN else env_value(name, value)
        for name, value in trainer_settings(job, n).to_env().items()
    ]
    # HF_TOKEN has always come right after AGPO_METRICS_PORT (before the optional model and
    # dataset paths); it stays there so that rendered pods do not change.
    split = next(
        (i for i, e in enumerate(settings) if e["name"] == EnvVar.METRICS_PORT), len(settings) - 1
    )
    ours: list[Obj] = [
        *torchrun_env(job, n),
        env_value("PYTHONUNBUFFERED", 1),
        env_value(EnvVar.JOB_FILE, JOB_FILE),
        *settings[: split + 1],
        *hf_token_env(job),
        *settings[split + 1 :],
        *tracking_env(job),
    ]
    return merge_env(ours, [e.to_dict() for e in job.spec.trainer.env], RESERVED_ENV)


def _volumes(job: AGPOJob, n: Names) -> tuple[list[Obj], list[Obj]]:
    """Checkpoints (a claim; an emptyDir only when asked for), model and dataset PVCs."""
    volumes: list[Obj] = [{"name": "checkpoints", **checkpoint_volume_source(job, n)}]
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
    ev = job.spec.evaluation
    eval_file = ev.source.file if ev is not None and ev.source is not None else None
    if eval_file is not None and eval_file.pvc:
        claim = {"claimName": eval_file.pvc, "readOnly": True}
        volumes.append({"name": "eval-data", "persistentVolumeClaim": claim})
        mounts.append({"name": "eval-data", "mountPath": EVAL_DATA_DIR, "readOnly": True})
    return volumes, mounts


def trainer_pod_spec(job: AGPOJob, n: Names, options: BuildOptions) -> Obj:
    trainer = job.spec.trainer
    volumes, mounts = _volumes(job, n)
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
        # The trainer writes "permanent: ..." / "transient: ..." there (agpo_api.termination);
        # a process that dies without writing it leaves its log tail instead.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
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


def build_trainer_job(job: AGPOJob, n: Names, options: BuildOptions, creation: Creation) -> Obj:
    """The torchrun group of one attempt (``agpo.dev/attempt``; a restart is a new Job)."""
    attempt = creation.attempt
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
                "metadata": pod_template_metadata(
                    job,
                    n,
                    pod_labels,
                    pod_annotations(job),
                    gang_metadata(job, n, creation.gang_replicas),
                ),
                "spec": trainer_pod_spec(job, n, options),
            },
        },
    }


TRAINER_SERVICE = created(
    SERVICE, build_trainer_service, lambda n: n.trainer, "the trainer pods' headless Service"
)
TRAINER_JOB = Child(
    kind=Kind("batch/v1", "Job", "jobs"),
    build=build_trainer_job,
    name=lambda n: n.trainer,
    grants=(
        Grant(("create",), "the torchrun group of one attempt"),
        Grant(("list",), "read with the StatefulSet and the pods on every pass"),
        Grant(("watch",), "its changes wake the job's loop"),
        Grant(("patch",), "suspended when the job finishes (cleanPodPolicy Running)"),
        Grant(("delete",), "replaced on every restart"),
    ),
    lifetime=Lifetime.ATTEMPT,
)
