"""The rollout pool of a running job: its size, what the scale subresource reports, and
whether every server serves the newest weights (pure, editing a
:class:`~agpo_operator.machine.Machine`).

* :func:`scale`: the StatefulSet follows ``spec.rollout.replicas`` (``kubectl scale
  agpojob/NAME``, an HPA or KEDA on the CR's scale subresource). Only the StatefulSet changes:
  the trainer finds the servers by DNS at every step boundary, so its Job is never touched.
  A gang job's StatefulSet keeps the servers its gang was admitted with (its minimum,
  :func:`gang_minimum`); those above it are a second StatefulSet, created when first needed,
  whose pods are admitted one by one (``builders.rollout``).
* :func:`report`: ``status.rolloutReplicas`` (the ready pods of both) and
  ``status.rolloutSelector``, the scale subresource's status replicas and selector.
* :func:`weight_sync`: ``WeightSyncDegraded`` from the trainer's ``/status``
  ``laggingServers`` (servers that missed the latest push within
  ``weightSync.timeoutSeconds``; the trainer sends them no prompts until a later push
  reaches them). It changes neither the phase nor anything running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agpo_api import AGPOJobSpec
from agpo_api.progress import wire_name
from agpo_api.vocabulary import ConditionType, EventType, Reason
from agpo_operator.actions import CreateRollout, DeleteRollout, Event, ScaleRollout
from agpo_operator.builders.common import Names
from agpo_operator.builders.rollout import (
    ROLLOUT_EXTRA,
    ROLLOUT_STATEFULSET,
    pool_sizes,
    rollout_selector,
)
from agpo_operator.conditions import condition
from agpo_operator.machine import Machine
from agpo_operator.observe import Observation, deleting

C, R = ConditionType, Reason
LAGGING = wire_name("lagging_servers")


def desired_now(statefulset: Mapping[str, Any] | None) -> int | None:
    """The StatefulSet's ``spec.replicas`` (None: no StatefulSet, or it says none)."""
    replicas = ((statefulset or {}).get("spec") or {}).get("replicas")
    return replicas if isinstance(replicas, int) else None


def gang_minimum(
    spec: AGPOJobSpec, applied_replicas: int | None, statefulset: Mapping[str, Any] | None
) -> int | None:
    """The vLLM servers a gang job's gang holds (None: no gang). The spec the job was created
    with says it (its ConfigMap, written once: no new field is needed); failing that, the
    gang's StatefulSet, which is never scaled; failing both, the spec as it is now."""
    if spec.run_policy.gang is None:
        return None
    for known in (applied_replicas, desired_now(statefulset)):
        if known is not None:
            return known
    return spec.rollout.replicas


def _minimum(m: Machine) -> int | None:
    return gang_minimum(m.spec, m.obs.applied_replicas, m.obs.statefulset)


def pool_size(obs: Observation) -> int | None:
    """The servers both StatefulSets ask for (None: the job's own is not there)."""
    current = desired_now(obs.statefulset)
    if current is None:
        return None
    return current + (desired_now(obs.extra_statefulset) or 0)


def scaling_up(m: Machine) -> bool:
    """The pool is being made larger in this pass: new servers are not ready yet, which is no
    loss of a ready one."""
    current = pool_size(m.obs)
    return current is not None and current < m.spec.rollout.replicas


def _resize(
    statefulset: Mapping[str, Any] | None, replicas: int, extra: bool, key: str
) -> CreateRollout | ScaleRollout | None:
    """What brings one StatefulSet to ``replicas`` servers (None: nothing, or it is going)."""
    current = desired_now(statefulset)
    if statefulset is None:  # the extra one until a gang job is first scaled above its gang
        return CreateRollout((key,)) if replicas > 0 else None
    if deleting(statefulset) or current is None or current == replicas:
        return None
    return ScaleRollout(replicas, extra)


def scale(m: Machine) -> None:
    """Each StatefulSet to its part of ``spec.rollout.replicas`` (level-based: whenever they
    differ, including after someone scaled one itself); the extra one is created when a gang
    job first asks for more servers than its gang holds, and kept at 0 servers after."""
    minimum = _minimum(m)
    main, extra = pool_sizes(m.spec, minimum)
    n = Names(m.obs.name, m.obs.namespace)
    actions = [
        a
        for a in (
            _resize(m.obs.statefulset, main, False, ROLLOUT_STATEFULSET.key(n)),
            _resize(m.obs.extra_statefulset, extra, True, ROLLOUT_EXTRA.key(n)),
        )
        if a is not None
    ]
    if not actions:
        return
    before = pool_size(m.obs) or 0
    for action in actions:
        m.act(action)
    message = f"rollout scaled from {before} to {main + extra} servers"
    if minimum is not None:
        message += f" ({extra} above the gang's {minimum}, each admitted on its own)"
    m.d.events.append(Event(EventType.NORMAL, R.ROLLOUT_SCALED, message))


def ready_replicas(statefulset: Mapping[str, Any] | None) -> int:
    """The StatefulSet's ready pods (0 when it is absent, going, or reports none yet)."""
    if statefulset is None or deleting(statefulset):
        return 0
    ready = (statefulset.get("status") or {}).get("readyReplicas")
    return ready if isinstance(ready, int) else 0


def _standing(statefulset: Mapping[str, Any] | None) -> bool:
    return statefulset is not None and not deleting(statefulset)


def delete_rollout(obs: Observation) -> DeleteRollout | None:
    """The vLLM StatefulSets that are there and not going yet (None: neither is): suspend and
    the end of a job remove them."""
    main, extra = _standing(obs.statefulset), _standing(obs.extra_statefulset)
    return DeleteRollout(main, extra) if main or extra else None


def report(m: Machine) -> None:
    """The scale subresource's status: ready servers of both StatefulSets, and the selector
    of the vLLM pods (it selects both)."""
    ready = ready_replicas(m.obs.statefulset) + ready_replicas(m.obs.extra_statefulset)
    m.st["rolloutReplicas"] = ready
    m.st["rolloutSelector"] = rollout_selector(Names(m.obs.name, m.obs.namespace))


def no_servers(m: Machine) -> None:
    """The StatefulSets go with the job's end: no server is ready any more."""
    m.st["rolloutReplicas"] = 0


def lagging_message(servers: Sequence[str]) -> str:
    """A function of the set of servers alone: an unchanged set gives the same message."""
    return (
        f"{len(servers)} rollout server(s) missed the latest weight push within "
        f"spec.rollout.weightSync.timeoutSeconds: {', '.join(servers)}; they get no prompts "
        "until a later push reaches them, the others go on"
    )


def weight_sync(m: Machine) -> None:
    """``WeightSyncDegraded`` from the trainer's ``laggingServers``; an absent (or malformed)
    field leaves the condition as it is (a trainer that does not report it)."""
    reported = (m.obs.progress or {}).get(LAGGING)
    if not isinstance(reported, list) or not all(isinstance(s, str) for s in reported):
        return
    servers = sorted(set(reported))
    if not servers:
        message = "every joined rollout server serves the newest pushed weights"
        m.cond(C.WEIGHT_SYNC_DEGRADED, False, R.ALL_SERVERS_SERVING, message, EventType.NORMAL)
        return
    message = lagging_message(servers)
    old = condition(m.st, C.WEIGHT_SYNC_DEGRADED) or {}
    # One Warning per set of lagging servers, not one per reconcile; the message names them.
    changed = old.get("status") != "True" or old.get("message") != message
    m.cond(C.WEIGHT_SYNC_DEGRADED, True, R.SERVERS_LAGGING, message)
    if changed:
        m.d.events.append(Event(EventType.WARNING, R.SERVERS_LAGGING, message))
