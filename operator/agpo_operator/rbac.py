"""The operator's RBAC rules as data: the one source for manifests/rbac and the Helm chart.

Only the verbs the operator uses (the operator tests check every API request they see against
these rules). Trainer and rollout pods run as ``<job>-workload``, a service account with no
Role bound and no token mounted: they need no API access.

``rbac_rules()`` is what the chart and ``manifests/rbac`` render; ``cluster_role()`` and
``role()`` wrap them for cluster-wide and single-namespace installs.

``get`` on a static child serves two purposes: after a create answered 409, checking that the
object is the job's own; and the periodic check that recreates deleted static children.
Secrets are the exception: create only (a deleted token Secret shows in the pods, see
``docs/reliability.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agpo_api import GROUP, PLURAL

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


RULES: tuple[Rule, ...] = (
    Rule(GROUP, (PLURAL,), ("list", "watch", "patch", "delete"),
         "watch jobs; kopf's finalizer (patch); delete a finished job after ttlSecondsAfterFinished"),
    Rule(GROUP, (f"{PLURAL}/status",), ("patch",), "write phase, conditions and progress"),
    Rule("", ("pods",), ("list", "watch", "delete"),
         "follow pod phases; replace a failed rollout pod"),
    Rule("", ("configmaps",), ("get", "create"),
         "the job file; read back the running spec to refuse immutable changes"),
    Rule("", ("secrets",), ("create",), "the rollout token (never read back)"),
    Rule("", ("services", "serviceaccounts"), ("get", "create"),
         "headless and metrics Services; the workload service account"),
    Rule("", ("persistentvolumeclaims",), ("get", "create"),
         "the job's checkpoint claim (never deleted: garbage collection or the user does)"),
    Rule("", ("events",), ("create",), "Kubernetes Events for transitions and failures"),
    Rule("apps", ("statefulsets",), ("list", "create", "delete"),
         "the vLLM rollout servers (deleted when suspended or finished)"),
    Rule("batch", ("jobs",), ("list", "watch", "create", "patch", "delete"),
         "the torchrun group (replaced on restart; suspended on cleanup)"),
    Rule("networking.k8s.io", ("networkpolicies",), ("get", "create"), "per-job network isolation"),
    Rule("monitoring.coreos.com", ("podmonitors",), ("get", "create"),
         "the optional PodMonitor (only where the Prometheus Operator is installed)"),
)  # fmt: skip

# Only with AGPO_PEERING set (several replicas coordinated by kopf peering).
PEERING_RULES: tuple[Rule, ...] = (
    Rule("kopf.dev", ("clusterkopfpeerings", "kopfpeerings"), ("get", "list", "watch", "patch"),
         "kopf peering between operator replicas"),
)  # fmt: skip


def rbac_rules(*, peering: bool = False) -> list[dict[str, Any]]:
    """The PolicyRules of the operator's ClusterRole (or Role)."""
    return [r.to_dict() for r in (*RULES, *(PEERING_RULES if peering else ()))]


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
