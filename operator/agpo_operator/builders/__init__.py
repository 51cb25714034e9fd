"""Pure builders: an AGPOJob in, the Kubernetes objects the operator creates out (plain dicts).

No I/O and no kopf here: the operator (``agpo_operator.reconciler``) and ``agpo render`` call
the same functions, so what ``agpo render`` prints is what the operator creates -- except the
rollout token's value (generated at creation) and ownerReferences (they need the job's uid;
:func:`~agpo_operator.builders.common.adopt` adds them).

Children come in three groups, each a registry (in creation order):

* ``STATIC``: created once with the job and kept until it is deleted (configuration, identity,
  network isolation, checkpoint storage, Services, monitoring); recreated when deleted;
* ``ROLLOUT``: the vLLM StatefulSet (removed while suspended or finished);
* ``TRAINER``: the torchrun Job of the current attempt (replaced on every restart).
"""

from __future__ import annotations

from collections.abc import Callable

from agpo_api import AGPOJob
from agpo_operator.builders.common import BuildOptions, Names, Obj, adopt, names
from agpo_operator.builders.config import build_spec_configmap
from agpo_operator.builders.monitoring import build_metrics_service, build_pod_monitor
from agpo_operator.builders.rollout import build_rollout_service, build_rollout_statefulset
from agpo_operator.builders.security import (
    build_rollout_network_policy,
    build_service_account,
    build_token_secret,
    build_trainer_network_policy,
)
from agpo_operator.builders.storage import build_checkpoint_pvc
from agpo_operator.builders.trainer import build_trainer_job, build_trainer_service

Builder = Callable[[AGPOJob, Names, BuildOptions], Obj | None]

# Network policies come before anything that starts pods; the Secret before the pods use it.
STATIC: tuple[Builder, ...] = (
    build_service_account,
    build_rollout_network_policy,
    build_trainer_network_policy,
    build_token_secret,
    build_spec_configmap,
    build_checkpoint_pvc,
    build_rollout_service,
    build_trainer_service,
    build_metrics_service,
    build_pod_monitor,
)


def static_children(
    job: AGPOJob, namespace: str, options: BuildOptions, token: str | None = None
) -> list[Obj]:
    """The long-lived children; the Secret carries ``token`` when given (the operator's case)."""
    n = names(job, namespace)
    out = []
    for build in STATIC:
        obj = (
            build_token_secret(job, n, options, token)
            if build is build_token_secret
            else build(job, n, options)
        )
        if obj is not None:
            out.append(obj)
    return out


def rollout_children(job: AGPOJob, namespace: str, options: BuildOptions) -> list[Obj]:
    return [build_rollout_statefulset(job, names(job, namespace), options)]


def trainer_children(
    job: AGPOJob, namespace: str, options: BuildOptions, attempt: int = 0
) -> list[Obj]:
    return [build_trainer_job(job, names(job, namespace), options, attempt)]


def build_children(
    job: AGPOJob,
    namespace: str,
    options: BuildOptions | None = None,
    *,
    token: str | None = None,
    attempt: int = 0,
) -> list[Obj]:
    """Every child of a job, in creation order (what ``agpo render`` prints)."""
    options = options or BuildOptions()
    return [
        *static_children(job, namespace, options, token),
        *rollout_children(job, namespace, options),
        *trainer_children(job, namespace, options, attempt),
    ]


__all__ = [
    "STATIC",
    "BuildOptions",
    "Names",
    "Obj",
    "adopt",
    "build_children",
    "names",
    "rollout_children",
    "static_children",
    "trainer_children",
]
