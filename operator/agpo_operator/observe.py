"""Observe: what one job's decision looks at, read from the API and the trainer.

Pure parsing (:class:`PodView`, :func:`owned_by`, :func:`children_of`, :func:`parse_body`)
and the async reads built on it (:func:`read_children`, :func:`load_applied`,
:func:`fetch_progress`). :class:`Observation` is the input of
:func:`agpo_operator.decide.decide`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
import yaml

from agpo_api import API_VERSION, KIND, AGPOJob, AGPOJobSpec, InvalidJobError, parse_job
from agpo_api.layout import JOB_FILE_KEY
from agpo_api.termination import Termination, last_line, parse_termination
from agpo_api.vocabulary import Reason
from agpo_operator.builders.child import POD, Built
from agpo_operator.builders.common import COMPLETION_INDEX, JOB_LABEL, Names
from agpo_operator.builders.config import SPEC_CONFIGMAP
from agpo_operator.builders.rollout import ROLLOUT_STATEFULSET
from agpo_operator.builders.trainer import TRAINER_JOB
from agpo_operator.kube import Kube, Obj


class PodPhase(StrEnum):
    """Kubernetes' ``pod.status.phase`` (not the AGPOJob's :class:`~agpo_api.vocabulary.Phase`)."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class JobCondition(StrEnum):
    """The batch/v1 Job condition types the decisions read."""

    COMPLETE = "Complete"
    FAILED = "Failed"


# Waiting reasons of a container that is merely starting (not worth reporting).
_BENIGN_WAITING = {"ContainerCreating", "PodInitializing"}


# --------------------------------------------------------------------------- pods
@dataclass(frozen=True)
class PodView:
    """What the decisions need to know of one pod."""

    name: str
    phase: str
    ready: bool = False
    index: int | None = None
    restarts: int = 0
    deleting: bool = False
    problem: str = ""
    waiting: str = ""
    termination: Termination | None = None  # the contract line of a terminated container
    missing_secret: str = ""  # a Secret the pod's containers wait for (it was deleted)

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> PodView:
        meta, status = pod.get("metadata", {}), pod.get("status", {}) or {}
        raw_index = (meta.get("annotations") or {}).get(COMPLETION_INDEX) or (
            meta.get("labels") or {}
        ).get(COMPLETION_INDEX)
        containers = status.get("containerStatuses") or []
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        return cls(
            name=meta.get("name", ""),
            phase=status.get("phase") or PodPhase.PENDING.value,
            ready=ready,
            index=int(str(raw_index)) if str(raw_index or "").isdigit() else None,
            restarts=sum(int(c.get("restartCount") or 0) for c in containers),
            deleting=bool(meta.get("deletionTimestamp")),
            problem=_problem(containers) or status.get("reason") or "",
            waiting=_waiting(status, containers),
            termination=_contract(containers),
            missing_secret=_missing_secret(containers),
        )


def _terminated(containers: Iterable[Mapping[str, Any]]) -> Iterable[tuple[str, Obj]]:
    for c in containers:
        for state in (c.get("state") or {}, c.get("lastState") or {}):
            if term := state.get("terminated"):
                yield c.get("name", "?"), term


def _problem(containers: Iterable[Mapping[str, Any]]) -> str:
    """Why a container failed: its exit code, and its termination message's reason (the
    contract line, else the last line of the log tail FallbackToLogsOnError left there)."""
    for name, term in _terminated(containers):
        if term.get("exitCode", 0) != 0:
            reason = f" ({term['reason']})" if term.get("reason") else ""
            text = f"container {name} exited with code {term['exitCode']}{reason}"
            parsed = parse_termination(term.get("message"))
            if parsed is not None and parsed.kind is not None:
                return f"{text}: {parsed.kind.value}: {parsed.reason}"
            tail = last_line(term.get("message"))
            return f"{text}: {tail}" if tail else text
    return ""


def _contract(containers: Iterable[Mapping[str, Any]]) -> Termination | None:
    """The first container's contract line (a failure's kind, or a success's progress)."""
    for _, term in _terminated(containers):
        parsed = parse_termination(term.get("message"))
        if parsed is not None:
            return parsed
    return None


_SECRET_NOT_FOUND = re.compile(r'secret "([^"]+)" not found')


def _missing_secret(containers: Iterable[Mapping[str, Any]]) -> str:
    """The Secret a container cannot start without (the kubelet's CreateContainerConfigError)."""
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == "CreateContainerConfigError":
            found = _SECRET_NOT_FOUND.search(waiting.get("message") or "")
            if found:
                return found.group(1)
    return ""


def _waiting(status: Mapping[str, Any], containers: Iterable[Mapping[str, Any]]) -> str:
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in _BENIGN_WAITING:
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}".rstrip(": ")
    return ""


def rank0_running(trainer: Iterable[PodView]) -> bool:
    """Rank 0 runs: its ``/status`` can be polled."""
    return any(p.index == 0 and p.phase == PodPhase.RUNNING for p in trainer)


# --------------------------------------------------------------------------- objects
def owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Whether ``obj``'s controller is the object with ``uid``."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return uid is not None and any(r.get("uid") == uid and r.get("controller") for r in refs)


def job_condition(job: Mapping[str, Any] | None, ctype: JobCondition) -> Mapping[str, Any] | None:
    """A batch/v1 Job's condition of ``ctype`` when it is True."""
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return cond  # type: ignore[no-any-return]
    return None


def deleting(obj: Mapping[str, Any] | None) -> bool:
    return bool(obj and obj.get("metadata", {}).get("deletionTimestamp"))


@dataclass(frozen=True)
class Observation:
    """Everything :func:`~agpo_operator.decide.decide` looks at, gathered by the job's loop."""

    name: str
    namespace: str
    generation: int
    now: dt.datetime
    status: Mapping[str, Any]
    spec: AGPOJobSpec | None
    problems: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    refused_reason: Reason = Reason.IMMUTABLE_FIELD
    statefulset: Mapping[str, Any] | None = None
    trainer_job: Mapping[str, Any] | None = None
    rollout_pods: tuple[PodView, ...] = ()  # of both StatefulSets
    trainer_pods: tuple[PodView, ...] = ()
    # A gang job's servers above its gang (``<job>-rollout-x``), and rollout.replicas of the
    # spec the job was created with (its ConfigMap): how many servers its gang holds.
    extra_statefulset: Mapping[str, Any] | None = None
    applied_replicas: int | None = None
    progress: Mapping[str, Any] | None = None
    # Static children ("Kind/name") found missing by the last check (empty: all there, or
    # not checked in this pass); the token Secret is never read (see docs/reliability.md).
    missing_static: tuple[str, ...] = ()


@dataclass(frozen=True)
class Children:
    """The job's workload objects and their pods (as :class:`PodView`)."""

    statefulset: Obj | None = None
    trainer_job: Obj | None = None
    rollout_pods: tuple[PodView, ...] = ()
    trainer_pods: tuple[PodView, ...] = ()
    extra_statefulset: Obj | None = None


def _named(objs: list[Obj], name: str) -> Obj | None:
    return next((o for o in objs if o["metadata"]["name"] == name), None)


def _uid(obj: Obj | None) -> str | None:
    uid = (obj or {}).get("metadata", {}).get("uid")
    return uid if isinstance(uid, str) else None


def children_of(names: Names, stss: list[Obj], jobs: list[Obj], pods: list[Obj]) -> Children:
    """This job's StatefulSets and trainer Job among the listed ones, and the pods each owns
    (the rollout pods: those of both StatefulSets)."""
    sts, extra = _named(stss, names.rollout), _named(stss, names.rollout_extra)
    tj = _named(jobs, names.trainer)
    rollout_uids = [u for u in (_uid(sts), _uid(extra)) if u is not None]
    return Children(
        statefulset=sts,
        trainer_job=tj,
        rollout_pods=tuple(
            PodView.of(p) for p in pods if any(owned_by(p, u) for u in rollout_uids)
        ),
        trainer_pods=tuple(PodView.of(p) for p in pods if owned_by(p, _uid(tj))),
        extra_statefulset=extra,
    )


def parse_body(
    body: Mapping[str, Any], name: str, namespace: str
) -> tuple[AGPOJob | None, tuple[str, ...]]:
    """The job as the model reads it, or the model's problems with its spec."""
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": body.get("spec") or {},
    }
    try:
        return parse_job(doc), ()
    except InvalidJobError as err:
        return None, tuple(str(p) for p in err.problems)


def parse_applied(cm: Mapping[str, Any] | None) -> AGPOJobSpec | None:
    """The spec the children were built from, stored in the job's ConfigMap."""
    if cm is None:
        return None
    try:
        return parse_job(yaml.safe_load(cm["data"][JOB_FILE_KEY])).spec
    except (InvalidJobError, KeyError, TypeError, yaml.YAMLError):
        return None


# --------------------------------------------------------------------------- reads
async def read_children(kube: Kube, names: Names) -> Children:
    """Three LISTs by the job's label, every pass.

    Not a ``@kopf.index``: an index is filled from watch events, so a pass right after the
    operator created a child could miss it and create it again; the decisions are level-based
    and need to read their own writes. An index would also need a StatefulSet watch (more
    RBAC) and a kopf-side copy of every pod. The lists are filtered client-side as well (see
    :meth:`Kube.list`).
    """
    select = {JOB_LABEL: names.job}
    stss, jobs, pods = await asyncio.gather(
        kube.list(ROLLOUT_STATEFULSET.kind, names.namespace, select),
        kube.list(TRAINER_JOB.kind, names.namespace, select),
        kube.list(POD, names.namespace, select),
    )
    return children_of(names, stss, jobs, pods)


def child_key(obj: Mapping[str, Any]) -> str:
    """How actions and observations name a child: ``Kind/name``."""
    return f"{obj['kind']}/{obj['metadata']['name']}"


async def read_missing(kube: Kube, expected: Iterable[Built]) -> tuple[str, ...]:
    """The expected children (``Kind/name``) that do not exist or are being deleted: one GET
    each (the rights the 409 check needs anyway; a LIST per kind would need more)."""
    wanted = list(expected)
    found = await asyncio.gather(
        *(kube.get(c.kind, o["metadata"]["namespace"], o["metadata"]["name"]) for c, o in wanted)
    )
    return tuple(
        child_key(o) for (_, o), f in zip(wanted, found, strict=True) if f is None or deleting(f)
    )


async def load_applied(kube: Kube, names: Names) -> AGPOJobSpec | None:
    cm = await kube.get(SPEC_CONFIGMAP.kind, names.namespace, SPEC_CONFIGMAP.name(names))
    return parse_applied(cm)


async def fetch_progress(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    """Rank 0's JSON ``/status``; None when it does not answer (yet) or answers no object."""
    try:
        async with session.get(url) as response:
            if response.status == 200:
                data = await response.json(content_type=None)
                if isinstance(data, dict):
                    return data
    except (aiohttp.ClientError, TimeoutError, ValueError):
        pass  # the trainer may not serve yet
    return None
