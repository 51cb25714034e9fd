"""Pure builders: an AGPOJob in, the Kubernetes objects the operator creates out (plain dicts).

No I/O and no kopf here: the operator (``agpo_operator.act``) and ``agpo render`` call the
same functions, so what ``agpo render`` prints is what the operator creates -- except the
rollout token's value (generated at creation) and ownerReferences (they need the job's uid;
:func:`~agpo_operator.builders.common.adopt` adds them).

Each child object is a :class:`~agpo_operator.builders.child.Child` next to its builder;
:data:`CHILDREN` registers them, in creation order within each lifetime:

* static: created once with the job and kept until it is deleted (identity, network
  isolation, the token, configuration, checkpoint storage, Services, monitoring); recreated
  when deleted;
* rollout: the vLLM StatefulSet, and a gang job's second one for the servers above its gang
  (removed while suspended or finished);
* attempt: the torchrun Job of the current attempt (replaced on every restart).
"""

from __future__ import annotations

from agpo_api import AGPOJob
from agpo_operator.builders.child import Child, Creation, Lifetime, Registry
from agpo_operator.builders.common import BuildOptions, Names, Obj, adopt, names
from agpo_operator.builders.config import SPEC_CONFIGMAP
from agpo_operator.builders.gang import POD_GROUP
from agpo_operator.builders.monitoring import METRICS_SERVICE, POD_MONITOR
from agpo_operator.builders.rollout import ROLLOUT_EXTRA, ROLLOUT_SERVICE, ROLLOUT_STATEFULSET
from agpo_operator.builders.security import (
    ROLLOUT_NETWORK_POLICY,
    SERVICE_ACCOUNT,
    TOKEN_SECRET,
    TRAINER_NETWORK_POLICY,
)
from agpo_operator.builders.storage import CHECKPOINT_CLAIM
from agpo_operator.builders.trainer import TRAINER_JOB, TRAINER_SERVICE

# Within an order, registration order is what `agpo render` prints. The Secret comes before
# the pods that use it, the claim before the trainer Job that mounts it.
CHILDREN = Registry((
    SERVICE_ACCOUNT,
    ROLLOUT_NETWORK_POLICY,
    TRAINER_NETWORK_POLICY,
    TOKEN_SECRET,
    SPEC_CONFIGMAP,
    CHECKPOINT_CLAIM,
    ROLLOUT_SERVICE,
    TRAINER_SERVICE,
    METRICS_SERVICE,
    POD_MONITOR,
    POD_GROUP,
    ROLLOUT_STATEFULSET,
    ROLLOUT_EXTRA,
    TRAINER_JOB,
))  # fmt: skip


def build_children(
    job: AGPOJob,
    namespace: str,
    options: BuildOptions | None = None,
    *,
    token: str | None = None,
    attempt: int = 0,
    registry: Registry = CHILDREN,
) -> list[Obj]:
    """Every child of a job, in creation order (what ``agpo render`` prints)."""
    options, creation = options or BuildOptions(), Creation(token, attempt)
    return [
        obj
        for lifetime in Lifetime
        for _, obj in registry.build(lifetime, job, namespace, options, creation)
    ]


__all__ = [
    "CHILDREN",
    "BuildOptions",
    "Child",
    "Names",
    "Obj",
    "Registry",
    "adopt",
    "build_children",
    "names",
]
