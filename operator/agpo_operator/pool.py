"""The rollout pool of a running job: its size, what the scale subresource reports, and
whether every server serves the newest weights (pure, editing a
:class:`~agpo_operator.machine.Machine`).

* :func:`scale`: the StatefulSet follows ``spec.rollout.replicas`` (``kubectl scale
  agpojob/NAME``, an HPA or KEDA on the CR's scale subresource). Only the StatefulSet changes:
  the trainer finds the servers by DNS at every step boundary, so its Job is never touched.
* :func:`report`: ``status.rolloutReplicas`` (the StatefulSet's ready pods) and
  ``status.rolloutSelector``, the scale subresource's status replicas and selector.
* :func:`weight_sync`: ``WeightSyncDegraded`` from the trainer's ``/status``
  ``laggingServers`` (servers that missed the latest push within
  ``weightSync.timeoutSeconds``; the trainer sends them no prompts until a later push
  reaches them). It changes neither the phase nor anything running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agpo_api.progress import wire_name
from agpo_api.vocabulary import ConditionType, EventType, Reason
from agpo_operator.actions import Event, ScaleRollout
from agpo_operator.builders.common import Names
from agpo_operator.builders.rollout import rollout_selector
from agpo_operator.conditions import condition
from agpo_operator.machine import Machine
from agpo_operator.observe import deleting

C, R = ConditionType, Reason
LAGGING = wire_name("lagging_servers")


def desired_now(statefulset: Mapping[str, Any] | None) -> int | None:
    """The StatefulSet's ``spec.replicas`` (None: no StatefulSet, or it says none)."""
    replicas = ((statefulset or {}).get("spec") or {}).get("replicas")
    return replicas if isinstance(replicas, int) else None


def scaling_up(m: Machine) -> bool:
    """The pool is being made larger in this pass: new servers are not ready yet, which is no
    loss of a ready one."""
    current = desired_now(m.obs.statefulset)
    return current is not None and current < m.spec.rollout.replicas


def scale(m: Machine) -> None:
    """Scale the existing StatefulSet to ``spec.rollout.replicas`` (level-based: whenever they
    differ, including after someone scaled the StatefulSet itself)."""
    sts = m.obs.statefulset
    current, wanted = desired_now(sts), m.spec.rollout.replicas
    if current is None or current == wanted or deleting(sts):
        return
    m.act(ScaleRollout(wanted))
    message = f"rollout scaled from {current} to {wanted} servers"
    m.d.events.append(Event(EventType.NORMAL, R.ROLLOUT_SCALED, message))


def ready_replicas(statefulset: Mapping[str, Any] | None) -> int:
    """The StatefulSet's ready pods (0 when it is absent, going, or reports none yet)."""
    if statefulset is None or deleting(statefulset):
        return 0
    ready = (statefulset.get("status") or {}).get("readyReplicas")
    return ready if isinstance(ready, int) else 0


def report(m: Machine) -> None:
    """The scale subresource's status: ready servers, and the selector of the vLLM pods."""
    m.st["rolloutReplicas"] = ready_replicas(m.obs.statefulset)
    m.st["rolloutSelector"] = rollout_selector(Names(m.obs.name, m.obs.namespace))


def no_servers(m: Machine) -> None:
    """The StatefulSet goes with the job's end: no server is ready any more."""
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
