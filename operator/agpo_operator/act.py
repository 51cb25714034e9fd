"""Act: each decided action as one API operation per child object it touches.

Which children an action creates or deletes is data: the children of its lifetime in the
registry (``ActContext.children``, the operator's :data:`agpo_operator.builders.CHILDREN`),
created in their ``order``, each checked after a 409 as its ``identity`` says.

:func:`perform` takes everything it needs as arguments (:class:`ActContext`, built by the
job's loop for one pass); nothing is kept between actions. What the loop must remember of an
action (the spec the children were built from, the job's own deletion) it records itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agpo_api import API_VERSION, KIND, AGPOJob, AGPOJobSpec
from agpo_api.vocabulary import EventType
from agpo_operator import builders
from agpo_operator.actions import (
    Action,
    CreateRollout,
    CreateStatic,
    CreateTrainer,
    DeleteJob,
    DeletePods,
    DeleteRollout,
    DeleteTrainer,
    Event,
    ScaleRollout,
    SuspendTrainer,
)
from agpo_operator.builders import BuildOptions, Child, Registry
from agpo_operator.builders.child import AGPOJOB, POD, Built, Creation, Identity, Lifetime, waves
from agpo_operator.builders.common import JOB_LABEL, Names
from agpo_operator.builders.rollout import ROLLOUT_EXTRA, ROLLOUT_STATEFULSET
from agpo_operator.builders.storage import retained
from agpo_operator.builders.trainer import TRAINER_JOB
from agpo_operator.kube import ApiError, Kube, Obj
from agpo_operator.observe import child_key, owned_by


class ChildConflictError(Exception):
    """A child's name is taken by an object this job does not own."""


@dataclass(frozen=True)
class ActContext:
    """What the actions of one pass need: the clients, and the job they are for."""

    kube: Kube
    options: BuildOptions
    names: Names
    uid: str  # the AGPOJob's, for the children's ownerReferences
    spec: AGPOJobSpec | None  # the spec to build children from
    has_api_group: Callable[[str], Awaitable[bool]]
    post_event: Callable[[Event], None]  # an Event on the AGPOJob
    children: Registry = builders.CHILDREN  # what the create and delete actions touch
    gang_replicas: int | None = None  # the vLLM servers of the job's gang (pool.gang_minimum)

    def job(self) -> AGPOJob:
        """The job to build children for: this job's name with the spec to act on."""
        assert self.spec is not None
        meta = {"name": self.names.job, "namespace": self.names.namespace}
        return AGPOJob.model_validate(
            {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": self.spec}
        )

    def build(self, lifetime: Lifetime, creation: Creation | None = None) -> list[Built]:
        """This job's children of one lifetime, in creation order."""
        made = dataclasses.replace(creation or Creation(), gang_replicas=self.gang_replicas)
        return self.children.build(lifetime, self.job(), self.names.namespace, self.options, made)


async def perform(ctx: ActContext, action: Action) -> None:
    """Carry out one action."""
    kube, n = ctx.kube, ctx.names
    match action:
        case CreateStatic(only):
            await _create_static(ctx, only)
        case CreateRollout(only):
            built = ctx.build(Lifetime.ROLLOUT)
            if only:
                built = [(c, obj) for c, obj in built if child_key(obj) in set(only)]
            await create_in_order(ctx, built)
        case CreateTrainer(attempt):
            await create_in_order(ctx, ctx.build(Lifetime.ATTEMPT, Creation(attempt=attempt)))
        case ScaleRollout(replicas, extra):
            # The scale subresource: the operator may change the pool's size and nothing else
            # of a StatefulSet (its RBAC grants patch on statefulsets/scale only).
            scale = {"spec": {"replicas": replicas}}
            child = ROLLOUT_EXTRA if extra else ROLLOUT_STATEFULSET
            await kube.patch(child.kind, n.namespace, child.name(n), scale, subresource="scale")
        case DeleteRollout(main, extra):
            chosen = ((ROLLOUT_STATEFULSET, main), (ROLLOUT_EXTRA, extra))
            await _delete(ctx, tuple(child for child, wanted in chosen if wanted))
        case DeleteTrainer():
            await _delete(ctx, ctx.children.of(Lifetime.ATTEMPT))
        case SuspendTrainer():
            suspend = {"spec": {"suspend": True}}
            await kube.patch(TRAINER_JOB.kind, n.namespace, TRAINER_JOB.name(n), suspend)
        case DeletePods(names):
            await asyncio.gather(
                *(kube.delete(POD, n.namespace, p, propagation="Background") for p in names)
            )
        case DeleteJob():
            await kube.delete(AGPOJOB, n.namespace, n.job, propagation="Background")


async def expected_static(
    ctx: ActContext, token: str | None = None, *, warn: bool = False
) -> list[Built]:
    """The static children this job should have here: none whose optional API the cluster
    lacks (with ``warn``, a Warning event says so, once per child: at the job's creation)."""
    spec = ctx.spec
    assert spec is not None
    out = []
    for child, obj in ctx.build(Lifetime.STATIC, Creation(token=token)):
        need = child.requires
        if need is not None and not await ctx.has_api_group(need.group):
            if warn:
                message = need.message(spec, ctx.names)
                ctx.post_event(Event(EventType.WARNING, need.reason, message))
            continue
        out.append((child, obj))
    return out


async def _create_static(ctx: ActContext, only: tuple[str, ...] = ()) -> None:
    # Recreating deleted children (``only``): the warning was posted when the job was created.
    children = await expected_static(ctx, secrets.token_urlsafe(32), warn=not only)
    if only:
        wanted = set(only)
        children = [(c, obj) for c, obj in children if child_key(obj) in wanted]
    await create_in_order(ctx, children)


async def create_in_order(ctx: ActContext, built: list[Built]) -> None:
    """Children of a lower ``order`` first; those of one order together."""
    for wave in waves(built):
        await asyncio.gather(*(create_child(ctx, child, obj) for child, obj in wave))


async def _delete(ctx: ActContext, children: tuple[Child, ...]) -> None:
    n = ctx.names
    for child in children:
        await ctx.kube.delete(child.kind, n.namespace, child.name(n))


async def create_child(ctx: ActContext, child: Child, obj: Obj) -> None:
    """Create an owned child (a retained one unowned); one that exists already must be ours."""
    keep = retained(obj)
    owned = obj if keep else builders.adopt(obj, ctx.names.job, ctx.uid)
    try:
        await ctx.kube.create(child.kind, owned)
    except ApiError as err:
        if err.status != 409:
            raise
        if child.identity is Identity.NAMED:
            return  # it cannot be read back (by design): the name is the job's own
        meta = obj["metadata"]
        current = await ctx.kube.get(child.kind, meta["namespace"], meta["name"])
        if current is None or owned_by(current, ctx.uid):
            return
        # A retained claim is left by an earlier job of this name: resume from it.
        labels = current.get("metadata", {}).get("labels") or {}
        if keep and retained(current) and labels.get(JOB_LABEL) == ctx.names.job:
            return
        raise ChildConflictError(
            f"{obj['kind']} {meta['name']} exists and is not owned by this AGPOJob"
        ) from None
