"""Act: each decided action as one API operation (or a few, for the static children).

:func:`perform` takes everything it needs as arguments (:class:`ActContext`, built by the
job's loop for one pass); nothing is kept between actions. What the loop must remember of an
action (the spec the children were built from, the job's own deletion) it records itself.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agpo_api import API_VERSION, KIND, AGPOJob, AGPOJobSpec
from agpo_api.vocabulary import EventType, Reason
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
    SuspendTrainer,
)
from agpo_operator.builders import BuildOptions
from agpo_operator.builders.common import JOB_LABEL, Names
from agpo_operator.builders.monitoring import PODMONITOR_API_GROUP
from agpo_operator.builders.storage import retained
from agpo_operator.kube import ApiError, Kube, Obj
from agpo_operator.observe import child_key, owned_by

# Created before the rest of a job's static children: network isolation (and the pods'
# identity) exists before anything else of the job.
FIRST_KINDS = frozenset({"NetworkPolicy", "ServiceAccount"})


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

    def job(self) -> AGPOJob:
        """The job to build children for: this job's name with the spec to act on."""
        assert self.spec is not None
        meta = {"name": self.names.job, "namespace": self.names.namespace}
        return AGPOJob.model_validate(
            {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": self.spec}
        )


async def perform(ctx: ActContext, action: Action) -> None:
    """Carry out one action."""
    kube, n = ctx.kube, ctx.names
    match action:
        case CreateStatic(only):
            await _create_static(ctx, only)
        case CreateRollout():
            for obj in builders.rollout_children(ctx.job(), n.namespace, ctx.options):
                await create_child(ctx, obj)
        case CreateTrainer(attempt):
            children = builders.trainer_children(ctx.job(), n.namespace, ctx.options, attempt)
            for obj in children:
                await create_child(ctx, obj)
        case DeleteRollout():
            await kube.delete("apps/v1", "StatefulSet", n.namespace, n.rollout)
        case DeleteTrainer():
            await kube.delete("batch/v1", "Job", n.namespace, n.trainer)
        case SuspendTrainer():
            await kube.patch("batch/v1", "Job", n.namespace, n.trainer, {"spec": {"suspend": True}})
        case DeletePods(names):
            await asyncio.gather(
                *(kube.delete("v1", "Pod", n.namespace, p, propagation="Background") for p in names)
            )
        case DeleteJob():
            await kube.delete(API_VERSION, KIND, n.namespace, n.job, propagation="Background")


async def expected_static(ctx: ActContext, token: str | None = None) -> list[Obj]:
    """The static children this job should have here (no PodMonitor without its API)."""
    children = builders.static_children(ctx.job(), ctx.names.namespace, ctx.options, token)
    if any(c["kind"] == "PodMonitor" for c in children) and not await ctx.has_api_group(
        PODMONITOR_API_GROUP
    ):
        return [c for c in children if c["kind"] != "PodMonitor"]
    return children


async def _create_static(ctx: ActContext, only: tuple[str, ...] = ()) -> None:
    spec = ctx.spec
    assert spec is not None
    token = secrets.token_urlsafe(32)
    children = builders.static_children(ctx.job(), ctx.names.namespace, ctx.options, token)
    if only:  # recreating deleted children: the warning was posted when the job was created
        wanted = set(only)
        children = [c for c in await expected_static(ctx, token) if child_key(c) in wanted]
    monitors = [c for c in children if c["kind"] == "PodMonitor"]
    if monitors and not await ctx.has_api_group(PODMONITOR_API_GROUP):
        children = [c for c in children if c["kind"] != "PodMonitor"]
        message = (
            "spec.metrics.podMonitor is true but the monitoring.coreos.com API (Prometheus "
            "Operator) is not installed: no PodMonitor is created; the trainer still serves "
            f"metrics on port {spec.metrics.port} (Service {ctx.names.metrics})"
        )
        ctx.post_event(Event(EventType.WARNING, Reason.POD_MONITOR_UNAVAILABLE, message))
    first = [c for c in children if c["kind"] in FIRST_KINDS]
    rest = [c for c in children if c not in first]
    await asyncio.gather(*(create_child(ctx, c) for c in first))
    await asyncio.gather(*(create_child(ctx, c) for c in rest))


async def create_child(ctx: ActContext, obj: Obj) -> None:
    """Create an owned child (a retained one unowned); one that exists already must be ours."""
    keep = retained(obj)
    owned = obj if keep else builders.adopt(obj, ctx.names.job, ctx.uid)
    try:
        await ctx.kube.create(owned)
    except ApiError as err:
        if err.status != 409:
            raise
        if obj["kind"] == "Secret":
            return  # no read access to Secrets by design; the name is the job's own
        meta = obj["metadata"]
        current = await ctx.kube.get(
            obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]
        )
        if current is None or owned_by(current, ctx.uid):
            return
        # A retained claim is left by an earlier job of this name: resume from it.
        labels = current.get("metadata", {}).get("labels") or {}
        if keep and retained(current) and labels.get(JOB_LABEL) == ctx.names.job:
            return
        raise ChildConflictError(
            f"{obj['kind']} {meta['name']} exists and is not owned by this AGPOJob"
        ) from None
