"""Generate ``docs/api.md``, the field reference, from the same models as the CRD."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from agpo_api.base import ApiModel
from agpo_api.crd import _field_default, _model_classes, model_schema
from agpo_api.models import AGPOJobSpec, AGPOJobStatus

INTRO = """\
# AGPOJob API reference (`agpo.dev/v1alpha1`)

Generated from `api/agpo_api/models/` by `make generate`; do not edit.
Field names are as written in YAML. A field without a default is optional unless marked
**required**. Cross-field rules are enforced by `agpo validate`, by the operator, and by the
API server (CEL rules in the CRD).
"""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for tp in _flat(annotation):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
    return None


def _flat(tp: Any) -> list[Any]:
    args = getattr(tp, "__args__", None)
    return [tp] if not args else [a for arg in args for a in _flat(arg)]


def _type_name(prop: dict[str, Any], annotation: Any) -> str:
    """A short type for the table, from the field's CRD schema node."""
    model = _model_of(annotation)
    link = f"[{model.__name__}](#{model.__name__.lower()})" if model else ""
    kind = prop.get("type", "")
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if kind == "array":
        return f"list of {link or prop.get('items', {}).get('type', 'object')}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"map of {prop['additionalProperties'].get('type', 'object')}"
    return link or str(kind or "object")


def _table(cls: type[ApiModel]) -> str:
    props = model_schema(cls).get("properties", {})
    lines = [f"## {cls.__name__}", "", (cls.__doc__ or "").strip(), ""]
    lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in cls.model_fields.items():
        default = _field_default(field)
        if field.is_required():
            shown = "**required**"
        elif default is ... or default == {}:
            shown = ""
        else:
            shown = f"`{default}`"
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| `{field.alias or name}` | {_type_name(props.get(field.alias or name, {}), field.annotation)} | {shown} | {desc} |"
        )
    if cls.rules:
        lines += ["", "Rules:", ""]
        lines += [f"- `{r.field or '(object)'}`: {r.message}" for r in cls.rules]
    return "\n".join(lines) + "\n"


def api_markdown() -> str:
    """The whole reference page."""
    seen = {**_model_classes(AGPOJobSpec), **_model_classes(AGPOJobStatus)}
    return INTRO + "\n" + "\n".join(_table(cls) for cls in seen.values())
