"""Shared machinery of the AGPOJob API models: the base class and cross-field rules.

A cross-field rule is written once, as a :class:`Rule`, and serves twice: the pydantic model
checks it in Python (``check``) and the CRD generator copies its CEL form (``cel``) into the
schema's ``x-kubernetes-validations``, so the API server and the operator agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

# Kubernetes name grammars (k8s.io/apimachinery/pkg/util/validation).
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A resource quantity such as 500m, 4Gi, 1e3, 2 (resource.Quantity's grammar).
QUANTITY = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$"

DnsLabel = Annotated[str, Field(pattern=DNS1123_LABEL, min_length=1, max_length=63)]
DnsSubdomain = Annotated[str, Field(pattern=DNS1123_SUBDOMAIN, min_length=1, max_length=253)]
Quantity = Annotated[str, Field(pattern=QUANTITY, max_length=64)]


@dataclass(frozen=True)
class Rule:
    """A cross-field rule of one model.

    ``field`` is the path, relative to the model, that a violation is reported on;
    ``cel`` is the same rule for the API server (``self`` is the model's object);
    ``message`` says what is wrong and how to fix it; ``check`` returns True when valid.
    """

    field: str
    cel: str
    message: str
    check: Callable[[Any], bool]

    def schema(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry for this rule."""
        out = {"rule": self.cel, "message": self.message}
        if self.field:
            out["fieldPath"] = "." + self.field
        return out


class ApiModel(BaseModel):
    """Base of every API model: camelCase names in YAML, strict types, unknown fields refused.

    ``strict`` keeps a quoted number (``learningRate: "1e-6"``) from being silently accepted;
    ``extra="forbid"`` turns a typo into an error instead of an ignored field.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        validate_default=False,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).rules:
            if not rule.check(self):
                # ctx.field lets the error formatter point at the offending field.
                raise PydanticCustomError("cross_field", rule.message, {"field": rule.field})
        return self

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def exactly_one(*names: str) -> Callable[[Any], bool]:
    """A check that exactly one of the given attributes is set."""
    return lambda obj: sum(getattr(obj, n) is not None for n in names) == 1


def at_most_one(*names: str) -> Callable[[Any], bool]:
    """A check that at most one of the given attributes is set."""
    return lambda obj: sum(getattr(obj, n) is not None for n in names) <= 1


def cel_count_set(*names: str) -> str:
    """CEL for "how many of these optional fields are set"."""
    return " + ".join(f"(has(self.{n}) ? 1 : 0)" for n in names)


_CALLABLE_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)
CALLABLE_PATTERN = _CALLABLE_RE.pattern
