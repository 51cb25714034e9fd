"""One AGPOJob's reconcile loop: observe (API reads, trainer /status), decide, act.

A kopf daemon runs :meth:`JobLoop.run` for every AGPOJob; it wakes on the job's and its pods'
watch events, on deadlines and every ``resync_seconds``. Reconciles of one job never overlap,
and an error in one job's loop is logged, counted and retried with a backoff -- other jobs are
not affected.

The status is written only here. The loop keeps the last status it wrote, so a decision never
acts on a stale copy from the watch stream; after an operator restart it starts from the
stored status, and the decisions (:mod:`agpo_operator.decide`) are level-based, so nothing
that the status already records is done twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import math
import time
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from agpo_api import AGPOJobSpec
from agpo_api.vocabulary import FINALIZER, TERMINAL_PHASES, ConditionType, EventType, Reason
from agpo_operator import metrics
from agpo_operator.act import ActContext, expected_static, perform
from agpo_operator.actions import Action, CreateStatic, Decision, DeleteJob, Event, is_create
from agpo_operator.builders import BuildOptions
from agpo_operator.builders.child import AGPOJOB, Identity
from agpo_operator.builders.common import Names
from agpo_operator.conditions import is_true
from agpo_operator.config import Config
from agpo_operator.decide import decide
from agpo_operator.kube import Kube
from agpo_operator.observe import (
    Observation,
    PodPhase,
    PodView,
    fetch_progress,
    load_applied,
    parse_body,
    rank0_running,
    read_children,
    read_missing,
)
from agpo_operator.pool import gang_minimum
from agpo_operator.spec_change import needs_applied, resolve_spec

Logger = logging.Logger | logging.LoggerAdapter[Any]
MAX_BACKOFF = 60.0


class Services(Protocol):
    """What a job's loop uses of the process (:class:`agpo_operator.runtime.Runtime`)."""

    config: Config
    options: BuildOptions
    phases: metrics.PhaseTracker

    @property
    def kube(self) -> Kube: ...

    def http(self) -> aiohttp.ClientSession: ...

    async def has_api_group(self, group: str) -> bool: ...

    def post_event(self, body: Mapping[str, Any], event: Event) -> None: ...


def wake_key(meta: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of an AGPOJob's metadata wakes its loop: spec, finalizer, deletion (not status)."""
    return (
        meta.get("generation"),
        FINALIZER in (meta.get("finalizers") or []),
        meta.get("deletionTimestamp"),
    )


class JobLoop:
    """The loop and the memory of one job (key: namespace, name)."""

    def __init__(self, services: Services, namespace: str, name: str) -> None:
        self.rt = services
        self.namespace, self.name = namespace, name
        self.names = Names(job=name, namespace=namespace)
        self.wakeup = asyncio.Event()
        self.status: dict[str, Any] | None = None  # the last status written (or read at start)
        self.applied: AGPOJobSpec | None = None  # the spec the children were built from
        self.progress: dict[str, Any] | None = None  # rank 0's last /status
        self.last_poll = -math.inf
        self.last_static_check = -math.inf
        self.seen: tuple[Any, ...] | None = None  # the wake_key of the last job event
        self.cleaned = False  # a finished job's pods are cleaned up: stop reading them
        self.deleted = False  # we deleted the job (TTL): nothing left to do
        self.errors = 0

    # ------------------------------------------------------------------ wake-ups
    async def run(self, body: Mapping[str, Any], stopped: Any, logger: Logger) -> None:
        """Reconcile until ``stopped`` (kopf's daemon stopper: the job is gone, or shutdown)."""
        self.status = dict(body.get("status") or {})
        stop = asyncio.create_task(_wait_stopped(stopped))
        try:
            while not stopped:
                self.wakeup.clear()
                delay = await self.reconcile_safely(body, logger)
                wake = asyncio.create_task(self.wakeup.wait())
                await asyncio.wait({wake, stop}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
        finally:
            stop.cancel()

    def wake(self) -> None:
        self.wakeup.set()

    def notice(self, meta: Mapping[str, Any]) -> None:
        """A watch event of the job: wake when the spec, the finalizer or the deletion
        changed (not for the loop's own status writes)."""
        seen = wake_key(meta)
        if seen != self.seen:
            self.seen = seen
            self.wake()

    async def reconcile_safely(self, body: Mapping[str, Any], logger: Logger) -> float:
        started = time.perf_counter()
        try:
            delay = await self.reconcile(body)
            self.errors = 0
            return delay
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.errors += 1
            metrics.RECONCILE_ERRORS.inc()
            delay = min(2.0**self.errors, MAX_BACKOFF)
            logger.warning(f"reconcile failed (retry in {delay:.0f}s): {err}")
            if self.errors == 1:
                event = Event(EventType.WARNING, Reason.RECONCILE_ERROR, str(err)[:1000])
                self.rt.post_event(body, event)
            return delay
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    async def reconcile(self, body: Mapping[str, Any]) -> float:
        """One pass; returns the seconds until the next one (unless an event comes first)."""
        meta = body.get("metadata", {})
        if self.deleted or meta.get("deletionTimestamp"):
            return self.rt.config.resync_seconds
        if FINALIZER not in (meta.get("finalizers") or []):
            # kopf is adding its finalizer: write nothing before that (its patch is guarded
            # by the resourceVersion; a status write in between would make it retry).
            return 0.1
        obs = await self.observe(body)
        decision = decide(obs)
        await self.apply(body, obs, decision)
        return self.next_delay(obs, decision)

    def next_delay(self, obs: Observation, decision: Decision) -> float:
        delay = self.rt.config.resync_seconds
        polling = rank0_running(obs.trainer_pods)
        if polling and (self.status or {}).get("phase") not in TERMINAL_PHASES:
            delay = min(delay, self.rt.config.status_poll_seconds)
        if decision.requeue_after is not None:
            delay = min(delay, decision.requeue_after + 0.05)
        return max(delay, 0.05)

    # ------------------------------------------------------------------ observe
    async def observe(self, body: Mapping[str, Any]) -> Observation:
        meta = body.get("metadata", {})
        status = self.status if self.status is not None else dict(body.get("status") or {})
        generation = int(meta.get("generation") or 1)
        job, problems = parse_body(body, self.name, self.namespace)
        applied = None
        # A gang job always: the spec it was created with says how many servers its gang holds
        # (read once, then remembered).
        gang = job is not None and job.spec.run_policy.gang is not None
        created = is_true(status, ConditionType.CREATED)
        if needs_applied(job, status, generation) or (gang and created):
            applied = self.applied or await load_applied(self.rt.kube, self.names)
            self.applied = applied or self.applied
        spec, refused, refused_reason = resolve_spec(job, problems, status, generation, applied)
        obs = Observation(
            name=self.name,
            namespace=self.namespace,
            generation=generation,
            now=dt.datetime.now(dt.UTC),
            status=status,
            spec=spec,
            problems=problems,
            refused=refused,
            refused_reason=refused_reason,
            applied_replicas=applied.rollout.replicas if applied is not None else None,
        )
        if spec is None or not is_true(status, ConditionType.CREATED) or self.cleaned:
            return obs
        children = await read_children(self.rt.kube, self.names)
        progress = await self.poll_progress(spec, children.trainer_pods)
        missing = await self.check_static(body, spec, status)
        return dataclasses.replace(
            obs,
            statefulset=children.statefulset,
            extra_statefulset=children.extra_statefulset,
            trainer_job=children.trainer_job,
            rollout_pods=children.rollout_pods,
            trainer_pods=children.trainer_pods,
            progress=progress,
            missing_static=missing,
        )

    async def check_static(
        self, body: Mapping[str, Any], spec: AGPOJobSpec, status: Mapping[str, Any]
    ) -> tuple[str, ...]:
        """The static children someone deleted, looked for at most every resync_seconds (one
        GET each of those that can be read: not the token Secret, see health._token_missing)."""
        now = time.monotonic()
        if status.get("phase") in TERMINAL_PHASES:
            return ()
        if now - self.last_static_check < self.rt.config.resync_seconds:
            return ()
        self.last_static_check = now
        expected = await expected_static(self.context(body, spec))
        readable = [(c, obj) for c, obj in expected if c.identity is Identity.OWNED]
        return await read_missing(self.rt.kube, readable)

    async def poll_progress(
        self, spec: AGPOJobSpec, trainer: tuple[PodView, ...]
    ) -> dict[str, Any] | None:
        """Rank 0's JSON ``/status`` (at most every status_poll_seconds, while it runs); the
        last one seen when it does not answer."""
        now = time.monotonic()
        if not rank0_running(trainer):
            return self.progress
        # A rank finished: training is over, read rank 0 now, while it may still answer.
        final = any(p.phase == PodPhase.SUCCEEDED for p in trainer)
        if now - self.last_poll < self.rt.config.status_poll_seconds and not final:
            return self.progress
        self.last_poll = now
        url = self.rt.config.status_url_for(self.name, self.namespace, spec.metrics.port)
        data = await fetch_progress(self.rt.http(), url)
        if data is not None:
            self.progress = data
        return self.progress

    # ------------------------------------------------------------------ act
    async def apply(self, body: Mapping[str, Any], obs: Observation, decision: Decision) -> None:
        """Creates first, then the status, then deletions (so a restart is counted before the
        old Job goes; an interrupted creation is simply retried)."""
        ctx = self.context(body, obs.spec, obs)
        creates = [a for a in decision.actions if is_create(a)]
        others = [a for a in decision.actions if not is_create(a)]
        for action in creates:
            await self.perform(ctx, action)
        await self.write_status(decision.status)
        for action in others:
            await self.perform(ctx, action)
        for event in decision.events:
            self.rt.post_event(body, event)
        for outcome, reason in decision.counters:
            metrics.count(outcome, reason)
        phase = decision.status.get("phase")
        self.rt.phases.set((self.namespace, self.name), phase)
        if phase in TERMINAL_PHASES and not others:
            self.cleaned = True
        elif phase not in TERMINAL_PHASES:
            self.cleaned = False

    def context(
        self, body: Mapping[str, Any], spec: AGPOJobSpec | None, obs: Observation | None = None
    ) -> ActContext:
        """What the actions need; ``obs`` says how many servers a gang job's gang holds (the
        check for deleted static children needs only their names)."""
        gang_replicas = None
        if spec is not None and obs is not None:
            gang_replicas = gang_minimum(spec, obs.applied_replicas, obs.statefulset)
        return ActContext(
            kube=self.rt.kube,
            options=self.rt.options,
            names=self.names,
            uid=body.get("metadata", {}).get("uid", ""),
            spec=spec,
            has_api_group=self.rt.has_api_group,
            post_event=lambda event: self.rt.post_event(body, event),
            gang_replicas=gang_replicas,
        )

    async def perform(self, ctx: ActContext, action: Action) -> None:
        """One action, and what the loop remembers of it."""
        await perform(ctx, action)
        # The job's creation; a ConfigMap recreated later keeps the gang's size, not ctx.spec's.
        if isinstance(action, CreateStatic) and not action.only:
            self.applied = ctx.spec
        elif isinstance(action, DeleteJob):
            self.deleted = True

    async def write_status(self, status: dict[str, Any]) -> None:
        old = self.status or {}
        patch = {k: v for k, v in status.items() if old.get(k) != v}
        patch.update({k: None for k in old if k not in status})
        if not patch:
            return
        result = await self.rt.kube.patch(
            AGPOJOB, self.namespace, self.name, {"status": patch}, subresource="status"
        )
        if result is not None:
            self.status = status


async def _wait_stopped(stopped: Any) -> None:
    await stopped.wait()
