"""RBAC as data: minimal, valid, and covering what the operator does (see test_operator)."""

from __future__ import annotations

import kubernetes_validate
from test_render import K8S_VERSION

from agpo_operator.rbac import RULES, allows, cluster_role, rbac_rules, role


def test_rules_are_minimal() -> None:
    rules = rbac_rules()
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)
    # Secrets: create only -- the operator never reads a Secret (not even its own token).
    assert allows(rules, "", "secrets", "create")
    assert not any(
        allows(rules, "", "secrets", v) for v in ("get", "list", "watch", "patch", "update")
    )
    # Pods are made by the StatefulSet and Job controllers, never by the operator.
    assert not allows(rules, "", "pods", "create")
    assert not allows(rules, "", "pods/exec", "create")
    assert not any(
        allows(rules, "rbac.authorization.k8s.io", r, "create") for r in ("roles", "rolebindings")
    )
    assert not allows(rules, "", "events", "delete")
    assert all(rule.why for rule in RULES)


def test_status_is_written_through_the_subresource() -> None:
    rules = rbac_rules()
    assert allows(rules, "agpo.dev", "agpojobs/status", "patch")
    assert not allows(rules, "agpo.dev", "agpojobs", "create")


def test_peering_rules_only_on_request() -> None:
    assert not allows(rbac_rules(), "kopf.dev", "clusterkopfpeerings", "patch")
    assert allows(rbac_rules(peering=True), "kopf.dev", "clusterkopfpeerings", "patch")


def test_role_objects_validate() -> None:
    for obj in (cluster_role(), cluster_role(peering=True), role("ml")):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert role("ml")["metadata"]["namespace"] == "ml"
    assert cluster_role()["rules"] == rbac_rules()
