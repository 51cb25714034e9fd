"""One AGPOJob's reconcile loop: observe (API reads, trainer /status), decide, act.

A kopf daemon runs :meth:`JobReconciler.run` for every AGPOJob; it wakes on the job's and its
pods' watch events, on deadlines and every ``resync_seconds``. Reconciles of one job never
overlap, and an error in one job's loop is logged, counted and retried with a backoff -- other
jobs are not affected.

The status is written only here. The loop keeps the last status it wrote, so a decision never
acts on a stale copy from the watch stream; after an operator restart it starts from the
stored status, and the decisions (:mod:`agpo_operator.status`) are level-based, so nothing that
the status already records is done twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import yaml

from agpo_api import API_VERSION, KIND, AGPOJob, AGPOJobSpec, InvalidJobError, parse_job
from agpo_api.layout import (
    JOB_FILE_KEY,
)
from agpo_operator import builders, metrics
from agpo_operator.builders.common import (
    JOB_LABEL,
    Names,
)
from agpo_operator.builders.monitoring import PODMONITOR_API_GROUP
from agpo_operator.kube import ApiError, Obj
from agpo_operator.status import (
    CREATES,
    TERMINAL,
    Act,
    Decision,
    Event,
    Observation,
    PodView,
    decide,
    effective_spec,
    immutable_changes,
    is_true,
    owned_by,
)

if TYPE_CHECKING:
    from agpo_operator.runtime import Runtime

Logger = logging.Logger | logging.LoggerAdapter[Any]
MAX_BACKOFF = 60.0
FINALIZER = "agpo.dev/operator"  # kopf's (settings.persistence.finalizer), for the daemon


class ChildConflictError(Exception):
    """A child's name is taken by an object this job does not own."""


class JobReconciler:
    """The loop and the memory of one job (key: namespace, name)."""

    def __init__(self, runtime: Runtime, namespace: str, name: str) -> None:
        self.rt = runtime
        self.namespace, self.name = namespace, name
        self.names = Names(job=name, namespace=namespace)
        self.wakeup = asyncio.Event()
        self.status: dict[str, Any] | None = None  # the last status written (or read at start)
        self.applied: AGPOJobSpec | None = None  # the spec the children were built from
        self.progress: dict[str, Any] | None = None
        self.last_poll = -math.inf
        self.rank0_running = False  # rank 0 ran at the last look: its progress is polled
        self.seen: tuple[Any, ...] | None = None  # what of the job's metadata woke us last
        self.cleaned = False  # a finished job's pods are cleaned up: stop reading them
        self.deleted = False  # we deleted the job (TTL): nothing left to do
        self.errors = 0
        self.body: Mapping[str, Any] = {}
        self.uid = ""

    # ------------------------------------------------------------------ loop
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
                self.rt.post_event(body, Event("Warning", "ReconcileError", str(err)[:1000]))
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
        return self.next_delay(decision)

    def next_delay(self, decision: Decision) -> float:
        delay = self.rt.config.resync_seconds
        if self.rank0_running and (self.status or {}).get("phase") not in TERMINAL:
            delay = min(delay, self.rt.config.status_poll_seconds)
        if decision.requeue_after is not None:
            delay = min(delay, decision.requeue_after + 0.05)
        return max(delay, 0.05)

    # ------------------------------------------------------------------ observe
    async def observe(self, body: Mapping[str, Any]) -> Observation:
        meta = body.get("metadata", {})
        status = self.status if self.status is not None else dict(body.get("status") or {})
        generation = int(meta.get("generation") or 1)
        job, problems = self.parse(body)
        spec, refused, refused_reason = await self.effective(job, problems, status, generation)
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
        )
        if spec is None or not is_true(status, "Created") or self.cleaned:
            return obs
        return await self.observe_children(obs)

    def parse(self, body: Mapping[str, Any]) -> tuple[AGPOJob | None, tuple[str, ...]]:
        doc = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": body.get("spec") or {},
        }
        try:
            return parse_job(doc), ()
        except InvalidJobError as err:
            return None, tuple(str(p) for p in err.problems)

    async def effective(
        self, job: AGPOJob | None, problems: tuple[str, ...], status: Mapping[str, Any],
        generation: int,
    ) -> tuple[AGPOJobSpec | None, tuple[str, ...], str]:  # fmt: skip
        """The spec to act on, and the refused changes (immutable fields, invalid edits)."""
        if not is_true(status, "Created"):
            return (job.spec if job else None), (), ""
        unchanged = generation == status.get("observedGeneration")
        if job is not None and unchanged and not is_true(status, "SpecChangeRefused"):
            return job.spec, (), ""
        applied = self.applied or await self.load_applied()
        if applied is None:  # the ConfigMap is gone: trust the current spec
            return (job.spec if job else None), problems, "InvalidSpec"
        self.applied = applied
        if job is None:
            return applied, tuple(f"invalid spec change: {p}" for p in problems), "InvalidSpec"
        changes = immutable_changes(applied, job.spec)
        if not changes:
            return job.spec, (), ""
        return effective_spec(applied, job.spec), tuple(changes), "ImmutableField"

    async def load_applied(self) -> AGPOJobSpec | None:
        cm = await self.rt.kube.get("v1", "ConfigMap", self.namespace, self.names.spec_configmap)
        if cm is None:
            return None
        try:
            return parse_job(yaml.safe_load(cm["data"][JOB_FILE_KEY])).spec
        except (InvalidJobError, KeyError, TypeError, yaml.YAMLError):
            return None

    async def observe_children(self, obs: Observation) -> Observation:
        kube, ns, select = self.rt.kube, self.namespace, {JOB_LABEL: self.name}
        stss, jobs, pods = await asyncio.gather(
            kube.list("apps/v1", "StatefulSet", ns, select),
            kube.list("batch/v1", "Job", ns, select),
            kube.list("v1", "Pod", ns, select),
        )
        sts = next((s for s in stss if s["metadata"]["name"] == self.names.rollout), None)
        tj = next((j for j in jobs if j["metadata"]["name"] == self.names.trainer), None)
        sts_uid = (sts or {}).get("metadata", {}).get("uid")
        tj_uid = (tj or {}).get("metadata", {}).get("uid")
        rollout = tuple(PodView.of(p) for p in pods if owned_by(p, sts_uid))
        trainer = tuple(PodView.of(p) for p in pods if owned_by(p, tj_uid))
        progress = await self.poll_progress(obs.spec, trainer)
        return dataclasses.replace(
            obs,
            statefulset=sts,
            trainer_job=tj,
            rollout_pods=rollout,
            trainer_pods=trainer,
            progress=progress,
        )

    async def poll_progress(self, spec: AGPOJobSpec | None, trainer: tuple[PodView, ...]) -> Any:
        """Rank 0's JSON ``/status`` (at most every status_poll_seconds, while it runs)."""
        self.rank0_running = any(p.index == 0 and p.phase == "Running" for p in trainer)
        now = time.monotonic()
        if spec is None or not self.rank0_running:
            return self.progress
        if now - self.last_poll < self.rt.config.status_poll_seconds:
            return self.progress
        self.last_poll = now
        url = self.rt.config.status_url_for(self.name, self.namespace, spec.metrics.port)
        try:
            async with self.rt.http().get(url) as response:
                if response.status == 200:
                    data = await response.json(content_type=None)
                    if isinstance(data, dict):
                        self.progress = data
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass  # the trainer may not serve yet; keep the last progress we saw
        return self.progress

    # ------------------------------------------------------------------ act
    async def apply(self, body: Mapping[str, Any], obs: Observation, decision: Decision) -> None:
        """Creates first, then the status, then deletions (so a restart is counted before the
        old Job goes; an interrupted creation is simply retried)."""
        self.body, self.uid = body, body.get("metadata", {}).get("uid", "")
        creates = [a for a in decision.actions if a.act in CREATES]
        others = [a for a in decision.actions if a.act not in CREATES]
        for action in creates:
            await ACTIONS[action.act](self, obs, action.arg)
        await self.write_status(decision.status)
        for action in others:
            await ACTIONS[action.act](self, obs, action.arg)
        for event in decision.events:
            self.rt.post_event(body, event)
        for outcome, reason in decision.counters:
            metrics.count(outcome, reason)
        self.rt.phases.set((self.namespace, self.name), decision.status.get("phase"))
        if decision.status.get("phase") in TERMINAL and not others:
            self.cleaned = True
        elif decision.status.get("phase") not in TERMINAL:
            self.cleaned = False

    async def write_status(self, status: dict[str, Any]) -> None:
        old = self.status or {}
        patch = {k: v for k, v in status.items() if old.get(k) != v}
        patch.update({k: None for k in old if k not in status})
        if not patch:
            return
        result = await self.rt.kube.patch(
            API_VERSION, KIND, self.namespace, self.name, {"status": patch}, subresource="status"
        )
        if result is not None:
            self.status = status

    async def create(self, obj: Obj) -> None:
        """Create an owned child; one that exists already must be ours."""
        uid = self.uid
        owned = builders.adopt(obj, self.name, uid)
        try:
            await self.rt.kube.create(owned)
        except ApiError as err:
            if err.status != 409:
                raise
            if obj["kind"] == "Secret":
                return  # no read access to Secrets by design; the name is the job's own
            meta = obj["metadata"]
            current = await self.rt.kube.get(
                obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]
            )
            if current is not None and not owned_by(current, uid):
                raise ChildConflictError(
                    f"{obj['kind']} {meta['name']} exists and is not owned by this AGPOJob"
                ) from None


async def _wait_stopped(stopped: Any) -> None:
    await stopped.wait()


# ---------------------------------------------------------------------- actions
async def _create_static(r: JobReconciler, obs: Observation, arg: Any) -> None:
    spec = obs.spec
    assert spec is not None
    job = _job(r, spec)
    token = secrets.token_urlsafe(32)
    children = builders.static_children(job, r.namespace, r.rt.options, token)
    monitors = [c for c in children if c["kind"] == "PodMonitor"]
    if monitors and not await r.rt.has_api_group(PODMONITOR_API_GROUP):
        children = [c for c in children if c["kind"] != "PodMonitor"]
        message = (
            "spec.metrics.podMonitor is true but the monitoring.coreos.com API (Prometheus "
            "Operator) is not installed: no PodMonitor is created; the trainer still serves "
            f"metrics on port {spec.metrics.port} (Service {r.names.metrics})"
        )
        r.rt.post_event(r.body, Event("Warning", "PodMonitorUnavailable", message))
    # Network isolation (and the pods' identity) exists before anything else of the job.
    first = [c for c in children if c["kind"] in {"NetworkPolicy", "ServiceAccount"}]
    rest = [c for c in children if c not in first]
    await asyncio.gather(*(r.create(c) for c in first))
    await asyncio.gather(*(r.create(c) for c in rest))
    r.applied = spec


async def _create_rollout(r: JobReconciler, obs: Observation, arg: Any) -> None:
    assert obs.spec is not None
    for obj in builders.rollout_children(_job(r, obs.spec), r.namespace, r.rt.options):
        await r.create(obj)


async def _create_trainer(r: JobReconciler, obs: Observation, arg: Any) -> None:
    assert obs.spec is not None
    for obj in builders.trainer_children(_job(r, obs.spec), r.namespace, r.rt.options, arg):
        await r.create(obj)


async def _delete_rollout(r: JobReconciler, obs: Observation, arg: Any) -> None:
    await r.rt.kube.delete("apps/v1", "StatefulSet", r.namespace, r.names.rollout)


async def _delete_trainer(r: JobReconciler, obs: Observation, arg: Any) -> None:
    await r.rt.kube.delete("batch/v1", "Job", r.namespace, r.names.trainer)


async def _suspend_trainer(r: JobReconciler, obs: Observation, arg: Any) -> None:
    await r.rt.kube.patch(
        "batch/v1", "Job", r.namespace, r.names.trainer, {"spec": {"suspend": True}}
    )


async def _delete_pods(r: JobReconciler, obs: Observation, arg: Any) -> None:
    await asyncio.gather(
        *(r.rt.kube.delete("v1", "Pod", r.namespace, n, propagation="Background") for n in arg)
    )


async def _delete_job(r: JobReconciler, obs: Observation, arg: Any) -> None:
    await r.rt.kube.delete(API_VERSION, KIND, r.namespace, r.name, propagation="Background")
    r.deleted = True


def _job(r: JobReconciler, spec: AGPOJobSpec) -> AGPOJob:
    """The job to build children for: this job's name with the spec to act on."""
    meta = {"name": r.name, "namespace": r.namespace}
    return AGPOJob.model_validate(
        {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec}
    )


# What each decided action does (the decisions are in agpo_operator.status).
ACTIONS: dict[Act, Callable[[JobReconciler, Observation, Any], Awaitable[None]]] = {
    Act.CREATE_STATIC: _create_static,
    Act.CREATE_ROLLOUT: _create_rollout,
    Act.CREATE_TRAINER: _create_trainer,
    Act.DELETE_ROLLOUT: _delete_rollout,
    Act.DELETE_TRAINER: _delete_trainer,
    Act.SUSPEND_TRAINER: _suspend_trainer,
    Act.DELETE_PODS: _delete_pods,
    Act.DELETE_JOB: _delete_job,
}
