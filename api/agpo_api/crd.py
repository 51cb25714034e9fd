"""Generate the AGPOJob CustomResourceDefinition from the pydantic models.

The output is a structural OpenAPI v3 schema as Kubernetes requires: every ``$ref`` inlined,
no ``anyOf`` for optional fields, ``default: {}`` on nested objects so the API server applies
the leaf defaults, enums and bounds from the field types, and each model's cross-field
:class:`~agpo_api.base.Rule` as ``x-kubernetes-validations`` (CEL).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from agpo_api.base import ApiModel
from agpo_api.models import (
    GROUP,
    KIND,
    MAX_JOB_NAME_LENGTH,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    AGPOJobSpec,
    AGPOJobStatus,
)

Schema = dict[str, Any]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
    {"name": "Steps", "type": "integer", "jsonPath": ".status.totalSteps", "priority": 1},
    {"name": "Reward", "type": "number", "jsonPath": ".status.rewardMean"},
    {"name": "Tokens", "type": "number", "jsonPath": ".status.completionTokensMean"},
    {"name": "Eval", "type": "number", "jsonPath": ".status.evalAccuracy"},
    {"name": "Serving", "type": "integer", "jsonPath": ".status.servingServers", "priority": 1},
    {
        "name": "Rollout-Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="RolloutReady")].status',
        "priority": 1,
    },
    {
        "name": "Succeeded",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Succeeded")].status',
        "priority": 1,
    },
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _model_classes(root: type[BaseModel]) -> dict[str, type[ApiModel]]:
    """Every ApiModel reachable from ``root``, by class name (the ``$defs`` keys)."""
    out: dict[str, type[ApiModel]] = {}

    def visit(cls: type[BaseModel]) -> None:
        if not issubclass(cls, ApiModel) or cls.__name__ in out:
            return
        out[cls.__name__] = cls
        for field in cls.model_fields.values():
            for arg in _type_args(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    visit(arg)

    visit(root)
    return out


def _type_args(tp: Any) -> list[Any]:
    args = getattr(tp, "__args__", None)
    if not args:
        return [tp]
    return [a for arg in args for a in _type_args(arg)]


def _field_default(field: FieldInfo) -> Any:
    """The default to publish in the CRD for a field, or ``...`` for none."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return {}  # the API server then fills the nested fields' own defaults
        if isinstance(value, list) and value and isinstance(value[0], BaseModel):
            return [v.model_dump(by_alias=True, exclude_none=True, mode="json") for v in value]
        return ...  # empty lists and maps: nothing worth storing
    if field.default is None or field.is_required():
        return ...
    return field.default


def _simplify(node: Schema) -> Schema:
    """Drop what structural schemas reject: titles, nullable unions, numeric exclusive bounds."""
    node = {k: v for k, v in node.items() if k != "title"}
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v != {"type": "null"}]
        if len(variants) != 1:
            raise ValueError(f"cannot express a union of {variants} structurally")
        node = {**_simplify(variants[0]), **node}
    if node.get("default", ...) is None:
        del node["default"]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node[bound], bool):
            node[inclusive] = node[bound]
            node[bound] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("additionalProperties"), bool):
        # Unknown fields: the API server prunes them and `kubectl apply` (strict field
        # validation) rejects them. Boolean additionalProperties is not structural (true
        # comes with x-kubernetes-preserve-unknown-fields, which says the same).
        del node["additionalProperties"]
    return node


def _convert(node: Any, defs: dict[str, Schema], classes: dict[str, type[ApiModel]]) -> Any:
    if isinstance(node, list):
        return [_convert(n, defs, classes) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        inlined = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(_with_model(inlined, classes.get(name)), defs, classes)
    node = _simplify(node)
    if "$ref" in node:  # an Optional[Model] unwrapped to a $ref
        return _convert(node, defs, classes)
    return {k: _convert(v, defs, classes) for k, v in node.items()}


def _with_model(schema: Schema, cls: type[ApiModel] | None) -> Schema:
    """Attach the model's CEL rules and the CRD-friendly defaults of its fields."""
    if cls is None:
        return schema
    schema = dict(schema)
    if cls.rules:
        schema["x-kubernetes-validations"] = [r.schema() for r in cls.rules]
    props = schema.get("properties", {})
    for name, field in cls.model_fields.items():
        alias = field.alias or name
        if alias not in props:
            continue
        default = _field_default(field)
        prop = {k: v for k, v in props[alias].items() if k != "default"}
        if default is not ...:
            prop["default"] = default
        props[alias] = prop
    return schema


def model_schema(model: type[ApiModel]) -> Schema:
    """The structural OpenAPI v3 schema of one model (refs inlined, rules attached)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    classes = _model_classes(model)
    return _convert(_with_model(raw, model), defs, classes)  # type: ignore[no-any-return]


def openapi_schema() -> Schema:
    """The ``openAPIV3Schema`` of the AGPOJob CRD."""
    spec = model_schema(AGPOJobSpec)
    spec["description"] = "What to train and how: model, data, algorithm, pods and run policy."
    status = model_schema(AGPOJobStatus)
    status["description"] = "Observed state, written by the operator."
    return {
        "type": "object",
        "description": "An RL post-training run (AGPO/GRPO) with vLLM rollouts and a torchrun "
        "trainer group.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_JOB_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_JOB_NAME_LENGTH} characters "
                "(child object names add suffixes)",
            }
        ],
    }


#: ``kubectl scale agpojob/NAME --replicas=N`` (and an HPA or KEDA) set the rollout pool's size;
#: the operator scales the StatefulSet and the trainer joins the new servers (docs/operate.md).
SCALE_SUBRESOURCE = {
    "specReplicasPath": ".spec.rollout.replicas",
    "statusReplicasPath": ".status.rolloutReplicas",
    "labelSelectorPath": ".status.rolloutSelector",
}


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "agpo-operator",
                "app.kubernetes.io/part-of": "agpo",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["agpo"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}, "scale": SCALE_SUBRESOURCE},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


HEADER = "# Generated by `agpo crd` from agpo_api/models/. Do not edit; run `make generate`.\n"


def crd_yaml() -> str:
    """The CRD as the YAML text checked into manifests/crd/ and the chart's crds/."""
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100)
