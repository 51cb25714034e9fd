"""Checkpoint storage: the PersistentVolumeClaim ``<job>-checkpoints`` the operator provisions.

Checkpoints on a claim survive the trainer pod (a restart, an eviction, a lost node), so no
failure costs more than one checkpoint interval. The claim is a static child, created with the
job's other long-lived children and so before the first trainer Job. ``reclaim: Delete`` (the
default): the job owns it and the garbage collector deletes it with the job. ``reclaim:
Retain``: it has no owner (annotation :data:`RECLAIM_ANNOTATION`) and outlives the job, so a
new job of the same name resumes from it.
"""

from __future__ import annotations

from agpo_api import AGPOJob, AGPOJobSpec
from agpo_api.models import DEFAULT_CHECKPOINT_SIZE
from agpo_operator.builders.child import Kind, created
from agpo_operator.builders.common import BuildOptions, Names, Obj, metadata

#: On a child that must not be owned by the job (a retained checkpoint claim).
RECLAIM_ANNOTATION = "agpo.dev/reclaim"
RETAIN = "Retain"


def retained(obj: Obj) -> bool:
    """Whether a child is kept when the job goes (no ownerReference)."""
    return (obj["metadata"].get("annotations") or {}).get(RECLAIM_ANNOTATION) == RETAIN


def build_checkpoint_pvc(job: AGPOJob, n: Names, options: BuildOptions) -> Obj | None:
    """The claim for ``/checkpoints``; None for an existing ``checkpoint.pvc`` or an emptyDir."""
    storage = job.spec.training.checkpoint.provisioned()
    if storage is None or storage.empty_dir:
        return None
    meta = metadata(n, n.checkpoints, "checkpoints")
    meta["annotations"] = {RECLAIM_ANNOTATION: storage.reclaim}
    spec: Obj = {
        "accessModes": storage.modes(job.spec.trainer.nodes),
        "resources": {"requests": {"storage": storage.size or DEFAULT_CHECKPOINT_SIZE}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


CHECKPOINT_CLAIM = created(
    Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    build_checkpoint_pvc,
    lambda n: n.checkpoints,
    "the job's checkpoint claim (never deleted: garbage collection or the user does)",
)


def checkpoint_volume_source(job: AGPOJob, n: Names) -> Obj:
    """The ``checkpoints`` volume of trainer pods: a claim, else an emptyDir (asked for)."""
    ckpt = job.spec.training.checkpoint
    if ckpt.pvc:
        return {"persistentVolumeClaim": {"claimName": ckpt.pvc}}
    storage = ckpt.provisioned()
    if storage is not None and not storage.empty_dir:
        return {"persistentVolumeClaim": {"claimName": n.checkpoints}}
    return {"emptyDir": {}}


def ephemeral_checkpoints(spec: AGPOJobSpec) -> bool:
    """Checkpoints on an emptyDir: lost whenever the trainer pod is replaced."""
    storage = spec.training.checkpoint.provisioned()
    return storage is not None and storage.empty_dir
