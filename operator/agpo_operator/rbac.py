"""The operator's RBAC rules as data: the one source for manifests/rbac and the Helm chart.

Only the verbs the operator uses (the operator tests check every API request they see against
these rules). Trainer and rollout pods run as ``<job>-workload``, a service account with no
Role bound and no token mounted: they need no API access.

Derived, not kept by hand: every child's grants (its ``Child`` in ``agpo_operator.builders``,
with the reason for each verb) plus :data:`OTHERS`, what the operator does besides creating
its children. One rule per resource, in first-use order; a resource several children share
(Services, NetworkPolicies) gets the union of their verbs.

``rbac_rules()`` is what the chart and ``manifests/rbac`` render; ``cluster_role()`` and
``role()`` wrap them for cluster-wide and single-namespace installs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agpo_operator.builders import CHILDREN, Registry
from agpo_operator.builders.child import AGPOJOB, EVENT, POD, VERBS, Grant, Kind

NAME = "agpo-operator"


@dataclass(frozen=True)
class Rule:
    """One PolicyRule and why the operator needs it."""

    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiGroups": [self.api_group],
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


#: What the operator reads or writes that it does not create as a child.
OTHERS: tuple[tuple[Kind, Grant], ...] = (
    (AGPOJOB, Grant(("list", "watch", "patch", "delete"),
                    "watch jobs; kopf's finalizer (patch); delete a finished job after "
                    "ttlSecondsAfterFinished")),
    (AGPOJOB, Grant(("patch",), "write phase, conditions and progress", subresource="status")),
    (POD, Grant(("list", "watch", "delete"), "follow pod phases; replace a failed rollout pod")),
    (EVENT, Grant(("create",), "Kubernetes Events for transitions and failures")),
)  # fmt: skip


def derive(grants: Iterable[tuple[Kind, Grant]]) -> tuple[Rule, ...]:
    """One rule per (group, resource): the union of its verbs, every distinct reason."""
    verbs: dict[tuple[str, str], set[str]] = {}
    whys: dict[tuple[str, str], list[str]] = {}
    for kind, grant in grants:
        resource = f"{kind.plural}/{grant.subresource}" if grant.subresource else kind.plural
        key = (kind.group, resource)
        verbs.setdefault(key, set()).update(grant.verbs)
        if grant.why not in whys.setdefault(key, []):
            whys[key].append(grant.why)
    return tuple(
        Rule(group, (resource,), tuple(v for v in VERBS if v in verbs[group, resource]),
             "; ".join(whys[group, resource]))
        for group, resource in verbs
    )  # fmt: skip


def rules(children: Registry = CHILDREN) -> tuple[Rule, ...]:
    return derive((*OTHERS, *children.grants()))


RULES: tuple[Rule, ...] = rules()

# Only with AGPO_PEERING set (several replicas coordinated by kopf peering).
PEERING_RULES: tuple[Rule, ...] = (
    Rule("kopf.dev", ("clusterkopfpeerings", "kopfpeerings"), ("get", "list", "watch", "patch"),
         "kopf peering between operator replicas"),
)  # fmt: skip


def rbac_rules(*, peering: bool = False, children: Registry = CHILDREN) -> list[dict[str, Any]]:
    """The PolicyRules of the operator's ClusterRole (or Role)."""
    return [r.to_dict() for r in (*rules(children), *(PEERING_RULES if peering else ()))]


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "agpo"}


def cluster_role(name: str = NAME, *, peering: bool = False) -> dict[str, Any]:
    """The ClusterRole for a cluster-wide operator."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": _labels()},
        "rules": rbac_rules(peering=peering),
    }


def role(namespace: str, name: str = NAME, *, peering: bool = False) -> dict[str, Any]:
    """A Role for an operator that watches ``namespace`` (AGPO_WATCH_NAMESPACES)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels()},
        "rules": rbac_rules(peering=peering),
    }


def allows(rules: Iterable[Mapping[str, Any]], group: str, resource: str, verb: str) -> bool:
    """Whether PolicyRules grant ``verb`` on ``group``/``resource`` (``pods/status`` style)."""
    return any(
        group in r.get("apiGroups", ())
        and resource in r.get("resources", ())
        and verb in r.get("verbs", ())
        for r in rules
    )
