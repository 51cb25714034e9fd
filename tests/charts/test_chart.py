"""The Helm chart, linted and rendered by Helm's Go SDK (helm-python-sdk), offline.

Every render (defaults, each toggle on and off, everything on) must lint cleanly in strict
mode and every object must validate against the newest bundled 1.3x Kubernetes schemas with
``kubernetes-validate --strict``; each toggle's test also checks what it switches.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from chartlib import (
    ALL_ON,
    CHART,
    NAMESPACE,
    RELEASE,
    TOGGLES_OFF,
    TOGGLES_ON,
    by_kind,
    chart_crds,
    deep_merge,
    helm,
    key,
    lint,
    one,
    render,
    render_objects,
)
from k8s_validate import k8s_version, problems

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")

CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
APP_VERSION = CHART_META["appVersion"]
RBAC_FILE = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())


def assert_lints(values: dict[str, Any]) -> None:
    report = lint(values)
    bad = [m for m in report["messages"] if m["severity"] >= 2] + [
        {"error": e} for e in report["errors"]
    ]
    assert not bad, f"helm lint --strict with {values}: {bad}"


def assert_valid(objs: list[dict[str, Any]]) -> None:
    found = [p for o in objs for p in problems(o)]
    assert not found, "\n".join(found)


def deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "Deployment")


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = deployment(objs)["spec"]["template"]["spec"]["containers"]
    return c


def env(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objs)["env"]}


# --------------------------------------------------------------------------- lint + validate


def test_kubernetes_version_is_newest_13x() -> None:
    assert re.match(r"^1\.3\d\.", k8s_version())


def test_default_values_lint_render_and_validate() -> None:
    assert_lints({})
    objs = render_objects()
    assert {o["kind"] for o in objs} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "NetworkPolicy",
    }
    assert_valid(objs)


def test_crds_in_chart_validate() -> None:
    crds = chart_crds()
    assert [key(c) for c in crds] == [("CustomResourceDefinition", "agpojobs.agpo.dev", "")]
    assert_valid(crds)


@pytest.mark.parametrize("toggle", sorted(TOGGLES_ON))
@pytest.mark.parametrize("state", ["on", "off"])
def test_each_toggle_lints_and_validates(toggle: str, state: str) -> None:
    values = (TOGGLES_ON if state == "on" else TOGGLES_OFF)[toggle]
    assert_lints(values)
    objs = render_objects(values)
    assert objs
    assert_valid(objs)
    names = [key(o) for o in objs]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


def test_everything_on_lints_and_validates() -> None:
    for values in (ALL_ON, deep_merge(ALL_ON, TOGGLES_ON["watch.namespaces"])):
        assert_lints(values)
        assert_valid(render_objects(values))


# --------------------------------------------------------------------------- what each toggle does


def test_rbac_create_on_cluster_wide() -> None:
    objs = render_objects(TOGGLES_ON["rbac.create"])
    role = one(objs, "ClusterRole")
    assert role["rules"] == RBAC_FILE["rules"]
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
    ]
    assert not by_kind(objs, "Role") and not by_kind(objs, "RoleBinding")


def test_rbac_create_off_renders_no_rbac() -> None:
    kinds = {o["kind"] for o in render_objects(TOGGLES_OFF["rbac.create"])}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    # the ServiceAccount still exists for an administrator to bind
    assert "ServiceAccount" in kinds


def test_service_account_create_on_and_off() -> None:
    on = render_objects(TOGGLES_ON["serviceAccount.create"])
    assert one(on, "ServiceAccount")["metadata"]["name"] == RELEASE
    assert one(on, "ServiceAccount")["automountServiceAccountToken"] is True
    assert deployment(on)["spec"]["template"]["spec"]["serviceAccountName"] == RELEASE

    off = render_objects(TOGGLES_OFF["serviceAccount.create"])
    assert not by_kind(off, "ServiceAccount")
    assert deployment(off)["spec"]["template"]["spec"]["serviceAccountName"] == "default"
    named = render_objects({"serviceAccount": {"create": False, "name": "byo-sa"}})
    assert deployment(named)["spec"]["template"]["spec"]["serviceAccountName"] == "byo-sa"
    assert one(named, "ClusterRoleBinding")["subjects"][0]["name"] == "byo-sa"


def test_watch_all_namespaces() -> None:
    objs = render_objects(TOGGLES_OFF["watch.namespaces"])
    args = container(objs)["args"]
    assert "--all-namespaces" in args
    assert not [a for a in args if a.startswith("--namespace")]
    assert env(objs)["AGPO_WATCH_NAMESPACES"] == ""


def test_watch_some_namespaces_uses_roles() -> None:
    objs = render_objects(deep_merge(TOGGLES_ON["watch.namespaces"], ALL_ON))
    args = container(objs)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args
    assert env(objs)["AGPO_WATCH_NAMESPACES"] == "team-a,team-b"

    roles = {o["metadata"]["namespace"]: o for o in by_kind(objs, "Role")}
    bindings = {o["metadata"]["namespace"]: o for o in by_kind(objs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for ns in ("team-a", "team-b"):
        assert roles[ns]["rules"] == RBAC_FILE["namespacedRules"]
        assert bindings[ns]["subjects"] == [
            {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
        ]
    cluster_roles = by_kind(objs, "ClusterRole")
    if RBAC_FILE["clusterScopedRules"]:
        assert [r["rules"] for r in cluster_roles] == [RBAC_FILE["clusterScopedRules"]]
    else:
        assert not cluster_roles
    pm = one(objs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_metrics_service_on_and_off() -> None:
    on = render_objects(TOGGLES_ON["metrics.service.enabled"])
    svc = one(on, "Service")
    assert svc["metadata"]["name"] == f"{RELEASE}-metrics"
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = deployment(on)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert not by_kind(render_objects(TOGGLES_OFF["metrics.service.enabled"]), "Service")


def test_network_policy_on_and_off() -> None:
    on = render_objects(TOGGLES_ON["networkPolicy.enabled"])
    np = one(on, "NetworkPolicy")
    pod_labels = deployment(on)["spec"]["template"]["metadata"]["labels"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]} == {
        "metrics",
        "health",
    }
    limited = render_objects(
        {
            "networkPolicy": {
                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "mon"}}}]
            }
        }
    )
    assert one(limited, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert not by_kind(render_objects(TOGGLES_OFF["networkPolicy.enabled"]), "NetworkPolicy")


def test_service_monitor_on_and_off() -> None:
    on = render_objects(
        deep_merge(
            TOGGLES_ON["serviceMonitor.enabled"], {"serviceMonitor": {"labels": {"release": "kps"}}}
        )
    )
    sm = one(on, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert (
        sm["spec"]["selector"]["matchLabels"].items()
        <= one(on, "Service")["metadata"]["labels"].items()
    )
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert not by_kind(render_objects(TOGGLES_OFF["serviceMonitor.enabled"]), "ServiceMonitor")


def test_service_monitor_needs_the_metrics_service() -> None:
    h = helm()
    with pytest.raises(h.HelmError, match=r"metrics\.service\.enabled"):
        render({"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}})


def test_pod_monitor_on_and_off() -> None:
    on = render_objects(TOGGLES_ON["podMonitor.enabled"])
    pm = one(on, "PodMonitor")
    spec = pm["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "agpo-operator"}
    assert spec["podTargetLabels"] == ["agpo.dev/job", "agpo.dev/role"]
    assert [e["port"] for e in spec["podMetricsEndpoints"]] == ["metrics", "http"]
    assert not by_kind(render_objects(TOGGLES_OFF["podMonitor.enabled"]), "PodMonitor")


def test_pod_monitor_rollout_on_and_off() -> None:
    on = one(render_objects(TOGGLES_ON["podMonitor.rollout.enabled"]), "PodMonitor")["spec"]
    assert on["selector"]["matchExpressions"][0]["values"] == ["trainer", "rollout"]
    off = one(render_objects(TOGGLES_OFF["podMonitor.rollout.enabled"]), "PodMonitor")["spec"]
    assert off["selector"]["matchExpressions"][0]["values"] == ["trainer"]
    assert [e["port"] for e in off["podMetricsEndpoints"]] == ["metrics"]


def test_dashboard_on_and_off() -> None:
    on = render_objects(
        deep_merge(TOGGLES_ON["dashboard.enabled"], {"dashboard": {"namespace": "grafana"}})
    )
    cm = one(on, "ConfigMap")
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["agpo.json"])
    assert shipped == json.loads((CHART / "dashboards" / "agpo.json").read_text())
    assert not by_kind(render_objects(TOGGLES_OFF["dashboard.enabled"]), "ConfigMap")


def test_image_digest_on_and_off() -> None:
    on = render_objects(TOGGLES_ON["image.digest"])
    assert container(on)["image"] == "ghcr.io/agpo-dev/agpo-operator@sha256:" + "a" * 64
    annotations = deployment(on)["metadata"]["annotations"]
    assert not [v for v in annotations.values() if v.startswith("CKV_K8S_43")]

    off = render_objects(TOGGLES_OFF["image.digest"])
    assert container(off)["image"] == f"ghcr.io/agpo-dev/agpo-operator:{APP_VERSION}"
    tagged = render_objects({"image": {"tag": "9.9.9", "pullPolicy": "Always"}})
    assert container(tagged)["image"] == "ghcr.io/agpo-dev/agpo-operator:9.9.9"
    assert container(tagged)["imagePullPolicy"] == "Always"
    assert not [
        v
        for v in deployment(tagged)["metadata"]["annotations"].values()
        if v.startswith("CKV_K8S_15")
    ]


# --------------------------------------------------------------------------- the operator pod


def test_operator_command_and_env() -> None:
    objs = render_objects()
    c = container(objs)
    assert c["command"] == ["kopf"]
    assert c["args"][:5] == [
        "run",
        "-m",
        "agpo_operator",
        "--standalone",
        "--liveness=http://0.0.0.0:8080/healthz",
    ]
    e = env(objs)
    assert e["AGPO_TRAINER_IMAGE"] == f"ghcr.io/agpo-dev/agpo-trainer:{APP_VERSION}"
    assert e["AGPO_ROLLOUT_IMAGE"] == f"ghcr.io/agpo-dev/agpo-rollout:{APP_VERSION}"
    assert e["AGPO_METRICS_PORT"] == "9090"
    assert e["AGPO_HEALTH_PORT"] == "8080"
    assert e["AGPO_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert "AGPO_IMAGE_PULL_POLICY" not in e and "AGPO_MONITORING_NAMESPACE" not in e
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9090, "health": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_job_settings_reach_the_operator_env() -> None:
    objs = render_objects(
        {
            "jobs": {
                "trainerImage": "reg.example/t:1",
                "rolloutImage": "reg.example/r:1",
                "imagePullPolicy": "IfNotPresent",
                "monitoringNamespace": "monitoring",
            },
            "logging": {"level": "debug", "format": "json"},
            "extraArgs": ["--quiet-periods"],
            "extraEnv": [{"name": "AGPO_RESYNC_SECONDS", "value": "30"}],
        }
    )
    e = env(objs)
    assert e["AGPO_TRAINER_IMAGE"] == "reg.example/t:1"
    assert e["AGPO_ROLLOUT_IMAGE"] == "reg.example/r:1"
    assert e["AGPO_IMAGE_PULL_POLICY"] == "IfNotPresent"
    assert e["AGPO_MONITORING_NAMESPACE"] == "monitoring"
    assert e["AGPO_RESYNC_SECONDS"] == "30"
    args = container(objs)["args"]
    assert "--debug" in args and "--log-format=json" in args and args[-1] == "--quiet-periods"


def test_one_replica_recreate_standalone() -> None:
    d = deployment(render_objects())
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" in container([d])["args"]
    assert not [a for a in container([d])["args"] if a.startswith(("--peering", "-P"))]


def test_hardened_security_context() -> None:
    objs = render_objects()
    pod = deployment(objs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(objs)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    res = container(objs)["resources"]
    assert set(res["requests"]) == set(res["limits"]) == {"cpu", "memory"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container(objs)["volumeMounts"]


def test_names_stay_within_63_characters() -> None:
    long_release = "r" * 53  # Helm's maximum release name length
    for o in render_objects(ALL_ON, name=long_release):
        assert len(o["metadata"]["name"]) <= 63, key(o)
        for k, v in o["metadata"].get("labels", {}).items():
            assert len(v) <= 63, (key(o), k)
    assert {o["metadata"]["name"] for o in render_objects(name="agpo-operator-prod")} >= {
        "agpo-operator-prod"
    }
    assert "x-agpo-operator" in {o["metadata"]["name"] for o in render_objects(name="x")}


def test_notes_render_next_steps() -> None:
    notes = render()[f"{CHART.name}/templates/NOTES.txt"]
    assert "kubectl -n agpo-system rollout status deployment/agpo-operator" in notes
    assert "tiny-cpu.yaml" in notes and "every namespace" in notes
    assert "never upgrades it" in notes  # the CRD upgrade caveat
    notes = render(deep_merge(ALL_ON, TOGGLES_ON["watch.namespaces"]))[
        f"{CHART.name}/templates/NOTES.txt"
    ]
    assert "team-a, team-b" in notes and "PodMonitor" in notes and "ConfigMap" in notes


# --------------------------------------------------------------------------- values.schema.json

BAD_VALUES = [
    pytest.param({"replicaCount": 2}, "replicaCount", id="two-replicas"),
    pytest.param({"replicaCount": "1"}, "replicaCount", id="replicas-string"),
    pytest.param({"imageTag": "1.0"}, "imageTag", id="unknown-top-level-key"),
    pytest.param({"serviceMonitor": {"enabeld": True}}, "enabeld", id="misspelt-nested-key"),
    pytest.param({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy", id="bad-pull-policy"),
    pytest.param({"image": {"digest": "latest"}}, "digest", id="bad-digest"),
    pytest.param({"metrics": {"port": "9090"}}, "port", id="port-as-string"),
    pytest.param({"health": {"port": 70000}}, "port", id="port-out-of-range"),
    pytest.param({"watch": {"namespaces": ["Team_A"]}}, "namespaces", id="bad-namespace"),
    pytest.param({"watch": {"namespaces": "team-a"}}, "namespaces", id="namespaces-not-a-list"),
    pytest.param({"rbac": {"create": "yes"}}, "create", id="bool-as-string"),
    pytest.param({"logging": {"level": "trace"}}, "level", id="bad-log-level"),
    pytest.param({"podMonitor": {"interval": "15 seconds"}}, "interval", id="bad-duration"),
    pytest.param(
        {"jobs": {"imagePullPolicy": "always"}}, "imagePullPolicy", id="bad-job-pull-policy"
    ),
    pytest.param({"resources": {"limits": {"cpu": True}}}, "cpu", id="bad-quantity"),
]


@pytest.mark.parametrize(("values", "mentions"), BAD_VALUES)
def test_schema_rejects_wrong_values(values: dict[str, Any], mentions: str) -> None:
    h = helm()
    with h.Chart.load(CHART) as chart, pytest.raises(h.HelmValuesError) as err:
        chart.validate_schema(values)
    assert mentions in str(err.value)
    # `helm install` / `helm template` refuse them too, and `helm lint` reports them
    with pytest.raises(h.HelmValuesError):
        render(values)
    assert lint(values)["messages"], "helm lint accepted a wrong value"


def test_schema_accepts_the_defaults_and_every_toggle() -> None:
    h = helm()
    with h.Chart.load(CHART) as chart:
        chart.validate_schema({})
        for values in [*TOGGLES_ON.values(), *TOGGLES_OFF.values(), ALL_ON]:
            chart.validate_schema(values)


def test_schema_forbids_additional_properties_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    free_form = {"podSecurityContext", "securityContext", "affinity"}  # core/v1 types

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, (
                f"{path or '<root>'} allows extra keys"
            )
            for k, sub in node["properties"].items():
                walk(sub, f"{path}.{k}".lstrip("."))

    walk(schema, "")
    for k in free_form:
        assert schema["properties"][k]["type"] == "object"


def test_schema_and_values_list_the_same_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def keys(node: dict[str, Any], vals: dict[str, Any], path: str) -> None:
        props = node.get("properties")
        if props is None or not isinstance(vals, dict):
            return
        missing = set(vals) - set(props)
        assert not missing, f"{path}: values without schema: {missing}"
        # Helm's `global`, and optional core/v1 fields of ResourceRequirements, have no default
        stale = set(props) - set(vals) - {"global", "claims"}
        assert not stale, f"{path}: schema keys without a value: {stale}"
        for k in vals:
            assert props[k].get("description"), f"{path}.{k}: no description in the schema"
            keys(props[k], vals[k], f"{path}.{k}")

    keys(schema, values, "")


def test_every_value_is_documented() -> None:
    """Each leaf in values.yaml (or a parent covering it) has a `# --` comment above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented: dict[tuple[str, ...], bool] = {}
    stack: list[tuple[int, str]] = []
    comment_block: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            comment_block.append(stripped)
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not m:
            if not stripped:
                comment_block = []
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*[k for _, k in stack], m.group(2))
        documented[path] = any(c.startswith("# --") for c in comment_block)
        stack.append((indent, m.group(2)))
        comment_block = []

    values = yaml.safe_load("\n".join(lines))

    def check(node: Any, path: tuple[str, ...]) -> list[str]:
        if path and documented.get(path):
            return []
        if isinstance(node, dict) and node:
            return [u for k, v in node.items() for u in check(v, (*path, k))]
        return [".".join(path)]

    undocumented = check(values, ())
    assert not undocumented, f"values without a `# --` comment: {undocumented}"
