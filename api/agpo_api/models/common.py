"""Names of the API and the parts every section shares (secret refs, resources, env, tolerations)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from agpo_api.base import (
    ApiModel,
    DnsSubdomain,
    Quantity,
    Rule,
    at_most_one,
)

GROUP = "agpo.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AGPOJob"
PLURAL = "agpojobs"
SINGULAR = "agpojob"
SHORT_NAMES = ("agpo",)
# Children are named "<job>-rollout", "<job>-trainer-metrics", ...; Service names must be
# DNS-1035 labels of at most 63 characters, so the job name leaves room for the suffixes.
MAX_JOB_NAME_LENGTH = 40

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Port = Annotated[int, Field(ge=1, le=65535)]


# --------------------------------------------------------------------------- shared parts
class SecretKeyRef(ApiModel):
    """A key of a Secret in the job's namespace; the value reaches pods only via secretKeyRef."""

    name: DnsSubdomain = Field(description="Secret name.")
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")] = Field(
        description="Key inside the Secret."
    )


class ResourceRequirements(ApiModel):
    """Container resources, as in a Pod spec (quantities such as ``500m`` or ``16Gi``)."""

    requests: dict[str, Quantity] | None = Field(default=None, description="Minimum resources.")
    limits: dict[str, Quantity] | None = Field(default=None, description="Maximum resources.")


class EnvVar(ApiModel):
    """An environment variable: a literal ``value`` or a ``valueFrom`` source (as in a Pod)."""

    name: Annotated[
        str, Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    ]
    value: str | None = None
    value_from: dict[str, Any] | None = Field(
        default=None,
        description="A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    rules = (
        Rule(
            "value",
            "!(has(self.value) && has(self.valueFrom))",
            "set either value or valueFrom, not both",
            at_most_one("value", "value_from"),
        ),
    )


class Toleration(ApiModel):
    """A Pod toleration (core/v1 Toleration)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace, by name."""

    name: DnsSubdomain
