"""The generated CRD: structural, in sync with its copies, and as strict as the models.

The CRD is checked the way an API server would: defaults applied from the schema, then the
OpenAPI v3 schema (jsonschema, draft 4 semantics as Kubernetes uses), then every
``x-kubernetes-validations`` CEL rule evaluated with a real CEL interpreter (cel-python).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import celpy
import jsonschema
import pytest
import yaml

from agpo_api.crd import crd, crd_yaml
from agpo_operator.generate import GENERATED, drifted

from agpo_testlib import ROOT, SAMPLES
from cases import BAD_CASES, BadCase, apply

SCHEMA = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
# CEL keywords that Kubernetes exposes escaped as __keyword__ (apiextensions CEL docs).
CEL_RESERVED = {
    "function",
    "namespace",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "return",
    "var",
    "void",
    "while",
    "in",
}


def _walk(node: Any, path: str = ""):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        yield path, node
        for key, value in node.get("properties", {}).items():
            yield from _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    text = json.dumps(SCHEMA)
    assert "$ref" not in text and "anyOf" not in text and '"title"' not in text
    for path, node in _walk(SCHEMA):
        if path == ".metadata":
            continue
        assert "type" in node, f"{path} has no type"
        if "properties" in node:
            assert node["type"] == "object"
        assert not isinstance(node.get("additionalProperties"), bool), path


def test_crd_names_and_printer_columns() -> None:
    spec = crd()["spec"]
    assert spec["group"] == "agpo.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == "agpojobs" and spec["names"]["shortNames"] == ["agpo"]
    version = spec["versions"][0]
    # kubectl scale / an HPA drive the rollout pool through the scale subresource
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.rollout.replicas",
            "statusReplicasPath": ".status.rolloutReplicas",
            "labelSelectorPath": ".status.rolloutSelector",
        },
    }
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["rolloutReplicas"]["type"] == "integer"
    assert status["rolloutSelector"]["type"] == "string"
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Step", "Reward", "Tokens", "Age"} <= set(columns)
    for path in columns.values():
        assert "[-1:]" not in path
    assert columns["Succeeded"] == '.status.conditions[?(@.type=="Succeeded")].status'


@pytest.mark.parametrize(
    "rel", sorted(r for r, produce in GENERATED.items() if produce is crd_yaml)
)
def test_checked_in_copy_equals_agpo_crd_output(rel: str) -> None:
    assert (ROOT / rel).read_text() == crd_yaml(), f"{rel} drifted; run `make generate`"


def test_no_generated_file_drifted() -> None:
    """The CRD copies, docs/api.md and the RBAC copies all match their sources."""
    assert drifted() == [], "run `make generate`"


def test_drift_is_detected(tmp_path: Any) -> None:
    for rel in GENERATED:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(GENERATED[rel]())
    assert drifted(tmp_path) == []
    first = sorted(GENERATED)[0]
    (tmp_path / first).write_text(GENERATED[first]().replace("a", "b", 1))
    assert drifted(tmp_path) == [first]


# ------------------------------------------------------------------ an API server in miniature
def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting as the API server does it: missing fields with a default."""
    if isinstance(obj, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                obj[key] = apply_defaults(obj[key], sub)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(o, schema["items"]) for o in obj]
    return obj


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Emulate strict field validation (kubectl's default): unknown fields are errors."""
    schema = copy.deepcopy(schema)
    for _, node in _walk(schema):
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    return schema


def _escape(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {(f"__{k}__" if k in CEL_RESERVED else k): _escape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_escape(v) for v in obj]
    return obj


def cel_errors(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule that applies to ``obj``."""
    errors = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        ok = program.evaluate({"self": celpy.json_to_cel(_escape(obj))})
        if not bool(ok):
            errors.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                errors += cel_errors(obj[key], sub, f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            errors += cel_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def api_server_errors(doc: dict[str, Any]) -> list[str]:
    doc = apply_defaults(copy.deepcopy(doc), SCHEMA)
    validator = jsonschema.Draft4Validator(strict(SCHEMA))
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]
    return errors or cel_errors(doc, SCHEMA)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_schema_accepts_the_samples(path: Any) -> None:
    assert api_server_errors(yaml.safe_load(path.read_text())) == []


def test_schema_accepts_the_minimal_job_and_defaults_like_the_model(
    minimal_job: dict[str, Any],
) -> None:
    from agpo_api import parse_job

    assert api_server_errors(minimal_job) == []
    defaulted = apply_defaults(copy.deepcopy(minimal_job), SCHEMA)
    # the API server's defaulting and the model's defaults give the same spec
    assert parse_job(defaulted).to_dict()["spec"] == parse_job(minimal_job).to_dict()["spec"]
    assert defaulted["spec"]["algorithm"]["groupSize"] == 8


@pytest.mark.parametrize("case", [c for c in BAD_CASES if c.schema], ids=lambda c: c.id)
def test_schema_rejects_what_the_model_rejects(case: BadCase) -> None:
    errors = api_server_errors(apply(case.patch))
    assert errors, f"the CRD accepts a spec the model rejects ({case.id})"
