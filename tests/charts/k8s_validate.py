"""Validate rendered objects against Kubernetes' OpenAPI schemas, strictly.

Built-in kinds go through ``kubernetes-validate --strict`` (its Python API) at the newest
bundled 1.3x Kubernetes version. The Prometheus Operator kinds (ServiceMonitor, PodMonitor)
are not in those schemas: their ``metadata`` and label selectors are checked against the
Kubernetes definitions, and their ``spec`` against MONITOR_SPECS below, a strict subset of
the monitoring.coreos.com/v1 API written from its reference docs that lists only the fields
this project sets (so a misspelt field fails instead of being dropped by the API server).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate import utils as kv_utils


@cache
def k8s_version() -> str:
    """The newest Kubernetes 1.3x version whose schemas kubernetes-validate bundles."""
    versions = [v for v in kv_utils.all_versions() if re.match(r"^1\.3\d\.", v)]
    assert versions, "kubernetes-validate bundles no 1.3x schemas"
    return versions[-1]


_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_LABEL_NAME = {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {
            "enum": [
                "replace",
                "Replace",
                "keep",
                "Keep",
                "drop",
                "Drop",
                "hashmod",
                "HashMod",
                "labelmap",
                "LabelMap",
                "labeldrop",
                "LabelDrop",
                "labelkeep",
                "LabelKeep",
                "lowercase",
                "Lowercase",
                "uppercase",
                "Uppercase",
                "keepequal",
                "KeepEqual",
                "dropequal",
                "DropEqual",
            ]
        },
        "sourceLabels": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"},
        },
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer", "minimum": 0},
        "replacement": {"type": "string"},
    },
}
_ENDPOINT_COMMON = {
    "port": {"type": "string", "minLength": 1},
    "path": {"type": "string", "pattern": "^/"},
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
    "interval": _DURATION,
    "scrapeTimeout": _DURATION,
    "honorLabels": {"type": "boolean"},
    "relabelings": {"type": "array", "items": _RELABEL},
    "metricRelabelings": {"type": "array", "items": _RELABEL},
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "any": {"type": "boolean"},
        "matchNames": {"type": "array", "items": {"type": "string"}},
    },
}
MONITOR_SPECS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "endpoints"],
        "properties": {
            "jobLabel": _LABEL_NAME,
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "namespaceSelector": _NAMESPACE_SELECTOR,
            "selector": {"type": "object"},  # a LabelSelector, checked below
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": _ENDPOINT_COMMON,
                },
            },
        },
    },
    "PodMonitor": {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            "jobLabel": _LABEL_NAME,
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "namespaceSelector": _NAMESPACE_SELECTOR,
            "selector": {"type": "object"},  # a LabelSelector, checked below
            "podMetricsEndpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": _ENDPOINT_COMMON,
                },
            },
        },
    },
}


@cache
def _definitions() -> dict[str, Any]:
    version = k8s_version()
    return kv_utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
    )


def _definition_validator(name: str) -> jsonschema.Draft202012Validator:
    from referencing import Registry, Resource

    defs = _definitions()
    base = defs.get("$id", "https://kubernetes.io/api/_definitions.json")
    schema = {"$ref": f"{base}#/$defs/{name}"}
    registry = Registry().with_resource(base, Resource.from_contents(defs))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _monitor_problems(obj: dict[str, Any]) -> list[str]:
    problems = []
    kind = obj["kind"]
    if obj.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"{kind}: apiVersion {obj.get('apiVersion')!r}")
    extra = set(obj) - {"apiVersion", "kind", "metadata", "spec"}
    if extra:
        problems.append(f"{kind}: unknown top-level fields {sorted(extra)}")
    meta_v = _definition_validator("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
    problems += [
        f"{kind}.metadata: {e.message}" for e in meta_v.iter_errors(obj.get("metadata", {}))
    ]
    sel_v = _definition_validator("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector")
    spec = obj.get("spec", {})
    problems += [
        f"{kind}.spec.selector: {e.message}" for e in sel_v.iter_errors(spec.get("selector", {}))
    ]
    spec_v = jsonschema.Draft202012Validator(MONITOR_SPECS[kind])
    problems += [
        f"{kind}.spec.{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in spec_v.iter_errors(spec)
    ]
    return problems


def problems(obj: dict[str, Any]) -> list[str]:
    """Why ``obj`` is not a valid object for the newest 1.3x Kubernetes (empty: valid)."""
    if obj.get("kind") in MONITOR_SPECS:
        return _monitor_problems(obj)
    try:
        kubernetes_validate.validate(obj, k8s_version(), strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.absolute_path)
        return [f"{obj['kind']}/{obj.get('metadata', {}).get('name')}: {path}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [f"no schema for {err.api_version} {err.kind}"]
    return []
