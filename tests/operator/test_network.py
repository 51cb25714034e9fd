"""The NetworkPolicies admit exactly the job's own pods on exactly the intended ports.

A small evaluator of NetworkPolicy semantics (podSelector is namespace-local; a pod selected by
any Ingress policy accepts only what some rule admits) runs a matrix of connections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from agpo_api import parse_job
from agpo_api.layout import NCCL_SYNC_PORTS
from agpo_operator.builders import BuildOptions, build_children

from operator_support import sample

NS = "team"


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)


def pod(job: str, role: str, namespace: str = NS) -> Pod:
    return Pod(namespace, {"agpo.dev/job": job, "agpo.dev/role": role})


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        value, op = labels.get(expr["key"]), expr["operator"]
        ok = {
            "In": value in expr.get("values", []),
            "NotIn": value not in expr.get("values", []),
            "Exists": expr["key"] in labels,
            "DoesNotExist": expr["key"] not in labels,
        }[op]
        if not ok:
            return False
    return True


def peer_matches(peer: dict[str, Any], source: Pod, policy_ns: str) -> bool:
    ns_labels = {"kubernetes.io/metadata.name": source.namespace}
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif source.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], source.labels)


def port_matches(ports: list[dict[str, Any]] | None, port: int) -> bool:
    if not ports:
        return True
    return any(
        p.get("protocol", "TCP") == "TCP"
        and (p["port"] == port or ("endPort" in p and p["port"] <= port <= p["endPort"]))
        for p in ports
    )


def admits(policies: list[dict[str, Any]], target: Pod, source: Pod, port: int) -> bool:
    applicable = [
        p for p in policies
        if p["metadata"]["namespace"] == target.namespace
        and "Ingress" in p["spec"]["policyTypes"]
        and selects(p["spec"]["podSelector"], target.labels)
    ]  # fmt: skip
    if not applicable:
        return True
    return any(
        (not rule.get("from") or any(peer_matches(peer, source, p["metadata"]["namespace"]) for peer in rule["from"]))
        and port_matches(rule.get("ports"), port)
        for p in applicable
        for rule in p["spec"].get("ingress") or []
    )  # fmt: skip


def policies(options: BuildOptions, *jobs: str) -> list[dict[str, Any]]:
    out = []
    for name in jobs:
        manifest = sample()
        manifest["metadata"] = {"name": name}
        out += [
            o
            for o in build_children(parse_job(manifest), NS, options)
            if o["kind"] == "NetworkPolicy"
        ]
    return out


DEFAULT = BuildOptions(operator_namespace="agpo-system")
MONITORED = BuildOptions(operator_namespace="agpo-system", monitoring_namespace="monitoring")
NO_RANGE = BuildOptions(operator_namespace="agpo-system", ephemeral_ports=None)
OPERATOR = Pod("agpo-system", {"app.kubernetes.io/name": "agpo-operator"})
PROMETHEUS = Pod("monitoring", {"app": "prometheus"})

# (options, source, target, port, admitted); jobs "a" and "b" share the namespace.
MATRIX = [
    # rollout pods of job a: only job a's trainers, on the HTTP port and NCCL/Gloo data ports
    (DEFAULT, pod("a", "trainer"), pod("a", "rollout"), 8000, True),
    (DEFAULT, pod("a", "trainer"), pod("a", "rollout"), 40000, True),
    (DEFAULT, pod("a", "trainer"), pod("a", "rollout"), 22, False),
    (DEFAULT, pod("b", "trainer"), pod("a", "rollout"), 8000, False),
    (DEFAULT, pod("a", "rollout"), pod("a", "rollout"), 8000, False),
    (DEFAULT, Pod(NS), pod("a", "rollout"), 8000, False),
    (DEFAULT, pod("a", "trainer", "elsewhere"), pod("a", "rollout"), 8000, False),
    (DEFAULT, OPERATOR, pod("a", "rollout"), 8000, False),
    (DEFAULT, PROMETHEUS, pod("a", "rollout"), 8000, False),
    (MONITORED, PROMETHEUS, pod("a", "rollout"), 8000, True),
    (MONITORED, PROMETHEUS, pod("a", "rollout"), 40000, False),
    (NO_RANGE, pod("a", "trainer"), pod("a", "rollout"), 40000, False),
    # trainer pods of job a: rendezvous and weight sync only from job a's own pods
    (DEFAULT, pod("a", "trainer"), pod("a", "trainer"), 29500, True),
    (DEFAULT, pod("a", "rollout"), pod("a", "trainer"), 29600, True),
    (DEFAULT, pod("a", "rollout"), pod("a", "trainer"), 50000, True),
    (DEFAULT, pod("a", "rollout"), pod("a", "trainer"), 9400, False),
    (DEFAULT, pod("b", "rollout"), pod("a", "trainer"), 29600, False),
    (DEFAULT, pod("b", "trainer"), pod("a", "trainer"), 29500, False),
    (DEFAULT, pod("a", "workload"), pod("a", "trainer"), 29500, False),
    (DEFAULT, Pod(NS, {"agpo.dev/job": "a"}), pod("a", "trainer"), 29600, False),
    (DEFAULT, Pod(NS), pod("a", "trainer"), 29500, False),
    # the metrics and /status port: the operator's and the monitoring namespace only
    (DEFAULT, OPERATOR, pod("a", "trainer"), 9400, True),
    (DEFAULT, OPERATOR, pod("a", "trainer"), 29500, False),
    (DEFAULT, PROMETHEUS, pod("a", "trainer"), 9400, False),
    (MONITORED, PROMETHEUS, pod("a", "trainer"), 9400, True),
    (MONITORED, PROMETHEUS, pod("a", "trainer"), 29600, False),
    # other pods are not isolated by these policies
    (DEFAULT, Pod(NS), Pod(NS, {"app": "web"}), 80, True),
]


@pytest.mark.parametrize(("options", "source", "target", "port", "admitted"), MATRIX)
def test_connection_matrix(
    options: BuildOptions, source: Pod, target: Pod, port: int, admitted: bool
) -> None:
    assert admits(policies(options, "a", "b"), target, source, port) is admitted


def test_policies_select_exactly_the_job_pods() -> None:
    by_name = {p["metadata"]["name"]: p["spec"] for p in policies(DEFAULT, "a")}
    assert by_name["a-rollout"]["podSelector"] == {
        "matchLabels": {"agpo.dev/job": "a", "agpo.dev/role": "rollout"}
    }
    assert by_name["a-trainer"]["podSelector"] == {
        "matchLabels": {"agpo.dev/job": "a", "agpo.dev/role": "trainer"}
    }
    for spec in by_name.values():
        assert spec["policyTypes"] == ["Ingress"]
    trainer_ports = {p["port"] for p in by_name["a-trainer"]["ingress"][0]["ports"]}
    assert trainer_ports == {29500, 29600, 32768}
    assert by_name["a-trainer"]["ingress"][1]["ports"] == [{"protocol": "TCP", "port": 9400}]


def test_nccl_weight_sync_admits_the_block_of_store_ports_of_any_pool_size() -> None:
    """vLLM's nccl engine gives server i the rendezvous port weightSync.port + i; the pool may
    be scaled, so the whole block of NCCL_SYNC_PORTS is admitted, whatever the replicas."""
    manifest = sample("qwen-math-gpu", name="gpu", rollout__replicas=3)
    found = [
        o for o in build_children(parse_job(manifest), NS, NO_RANGE) if o["kind"] == "NetworkPolicy"
    ]
    trainer = next(
        p for p in found if p["spec"]["podSelector"]["matchLabels"]["agpo.dev/role"] == "trainer"
    )
    rollout_pod = pod("gpu", "rollout")
    for port in (29600, 29601, 29602, 29600 + NCCL_SYNC_PORTS - 1):
        assert admits([trainer], pod("gpu", "trainer"), rollout_pod, port), port
    assert not admits([trainer], pod("gpu", "trainer"), rollout_pod, 29600 + NCCL_SYNC_PORTS)


def test_a_job_cannot_switch_off_the_rollout_token_check() -> None:
    manifest = sample(rollout__env=[{"name": "AGPO_ROLLOUT_AUTH", "value": "disabled"}])
    sts = next(
        o for o in build_children(parse_job(manifest), NS, DEFAULT) if o["kind"] == "StatefulSet"
    )
    env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "AGPO_ROLLOUT_AUTH" not in {e["name"] for e in env}
