"""Generated copies in the chart and manifests/ match their one source.

The CRD comes from the API models, the RBAC rules from ``agpo_operator.rbac.rbac_rules()``;
``python -m agpo_operator.generate --check`` (``make verify``) fails on drift.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml

from agpo_operator import generate

from chartlib import CHART, MANIFESTS, ROOT, one, render_objects


def rbac_rules() -> list[dict[str, Any]]:
    rbac = pytest.importorskip(
        "agpo_operator.rbac", reason="agpo_operator.rbac (the operator's RBAC rules) is missing"
    )
    return [dict(r) for r in rbac.rbac_rules()]


def triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) a list of PolicyRules grants."""
    return {
        (g, r, v)
        for rule in rules
        for g in rule.get("apiGroups", [""])
        for r in rule.get("resources", [])
        for v in rule["verbs"]
    }


def test_generate_check_passes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agpo_operator.generate", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr


def test_crd_copies_are_identical() -> None:
    a = (MANIFESTS / "crd" / "agpo.dev_agpojobs.yaml").read_text()
    b = (CHART / "crds" / "agpo.dev_agpojobs.yaml").read_text()
    assert a == b


def test_generate_registers_the_rbac_copies() -> None:
    rbac_rules()
    assert set(generate.RBAC_GENERATED) <= set(generate.GENERATED)
    assert not [p for p in generate.RBAC_GENERATED if p in generate.drifted()]


def test_chart_rbac_file_holds_the_rules() -> None:
    rules = rbac_rules()
    doc = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    assert doc["rules"] == rules
    assert triples(doc["clusterScopedRules"]) | triples(doc["namespacedRules"]) == triples(rules)


def test_manifests_role_holds_the_rules() -> None:
    rules = rbac_rules()
    docs = [d for d in yaml.safe_load_all((MANIFESTS / "rbac" / "role.yaml").read_text()) if d]
    assert one(docs, "ClusterRole")["rules"] == rules
    binding = one(docs, "ClusterRoleBinding")
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": sa["metadata"]["name"],
            "namespace": sa["metadata"]["namespace"],
        }
    ]


def test_chart_renders_the_rules() -> None:
    rules = rbac_rules()
    assert one(render_objects(), "ClusterRole")["rules"] == rules


def test_operator_rules_need_no_wildcards_or_escalation() -> None:
    for g, r, v in triples(rbac_rules()):
        assert "*" not in (g, r, v)
        assert v not in {"escalate", "bind", "impersonate"}, (g, r, v)


def test_split_rules_by_scope() -> None:
    rules = [
        {"apiGroups": ["agpo.dev"], "resources": ["agpojobs", "agpojobs/status"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list"],
        },
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
    ]
    cluster, namespaced = generate.split_rules(rules)
    assert cluster == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list"],
        },
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
    ]
    assert namespaced == [
        {"apiGroups": ["agpo.dev"], "resources": ["agpojobs", "agpojobs/status"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    ]
