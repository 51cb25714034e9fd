"""Spec changes on a live job: which fields may change, which edits are refused (pure).

Only the fields of :data:`MUTABLE` may change once the children exist (some not below a
``floor`` on some jobs: it says which and why); every other change is refused
(``SpecChangeRefused``) and the job keeps running with the spec it was built from (stored in
its ConfigMap) plus the accepted changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import BaseModel

from agpo_api import AGPOJob, AGPOJobSpec
from agpo_api.vocabulary import ConditionType, Reason
from agpo_operator.conditions import is_true


@dataclass(frozen=True)
class Floor:
    """The least value a mutable number may take on a job: ``least`` of the spec it was
    created with (None: no floor there), and ``why`` (formatted with ``least``)."""

    least: Callable[[AGPOJobSpec], int | None]
    why: str


@dataclass(frozen=True)
class Mutable:
    """A spec field a user may change on a live job, by its attribute path from the spec."""

    path: tuple[str, ...]
    floor: Floor | None = None

    @property
    def wire(self) -> tuple[str, ...]:
        """The path in the manifest (camelCase aliases): ``("runPolicy", "suspend")``."""
        out, model = [], AGPOJobSpec
        for name in self.path:
            field = model.model_fields[name]
            out.append(field.alias or name)
            model = field.annotation  # type: ignore[assignment]
        return tuple(out)

    @property
    def name(self) -> str:
        return ".".join(self.wire)

    def least(self, running: AGPOJobSpec) -> int | None:
        """The field's floor on this job (None: none)."""
        return self.floor.least(running) if self.floor is not None else None

    def below(self, running: AGPOJobSpec, current: AGPOJobSpec) -> str | None:
        """The user's line when the requested value is below the field's floor (else None)."""
        least, value = self.least(running), _value(current, self.path)
        if self.floor is None or least is None or value >= least:
            return None
        why = self.floor.why.format(least=least)
        return f"spec.{self.name} cannot be below {least} on this job (requested: {value}): {why}"


def _run_policy(*names: str) -> tuple[Mutable, ...]:
    return tuple(Mutable(("run_policy", name)) for name in names)


#: The rollout pool is elastic: the operator scales the StatefulSet and the trainer finds the
#: servers by DNS at each step boundary (an nccl pool within its block of sync ports, which
#: the trainer's NetworkPolicy admits whole). A gang job's gang keeps the servers it was
#: admitted with (created with): only servers above them come and go, each admitted alone.
ROLLOUT_REPLICAS = Mutable(
    ("rollout", "replicas"),
    floor=Floor(
        lambda spec: spec.rollout.replicas if spec.run_policy.gang is not None else None,
        "runPolicy.gang is set and the gang was admitted with {least} vLLM servers, which "
        "stay while the job runs; only servers above {least} come and go, each admitted alone",
    ),
)

#: The fields a user may change on a live job; every other spec field is immutable.
MUTABLE: tuple[Mutable, ...] = (
    *_run_policy(
        "suspend", "active_deadline_seconds", "ttl_seconds_after_finished", "backoff_limit",
        "clean_pod_policy", "startup_timeout_seconds", "progress_timeout_seconds",
    ),
    ROLLOUT_REPLICAS,
)  # fmt: skip


def mutable_names() -> str:
    """The fields a live job may change, for the user's message: ``runPolicy.suspend, ...``."""
    return ", ".join(f.name for f in MUTABLE)


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def _without(spec: AGPOJobSpec, fields: tuple[Mutable, ...]) -> dict[str, Any]:
    data = spec.to_dict()
    for f in fields:
        *parents, leaf = f.wire
        node = data
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return data


def immutable_changes(applied: AGPOJobSpec, current: AGPOJobSpec) -> list[str]:
    """One line per refused change: a mutable field below its floor, then each other field
    that differs between the running and the requested spec."""
    old = _leaves(_without(applied, MUTABLE), "spec")
    new = _leaves(_without(current, MUTABLE), "spec")
    out = [line for f in MUTABLE if (line := f.below(applied, current)) is not None]
    for path in sorted(set(old) | set(new)):
        if old.get(path) != new.get(path):
            values = f"running: {old.get(path)!r}, requested: {new.get(path)!r}"
            out.append(f"{path} cannot change on a live job ({values})")
    return out


def _replace(model: BaseModel, path: tuple[str, ...], value: Any) -> Any:
    if not path:
        return value
    head, *rest = path
    return model.model_copy(update={head: _replace(getattr(model, head), tuple(rest), value)})


def _value(model: BaseModel, path: tuple[str, ...]) -> Any:
    for name in path:
        model = getattr(model, name)
    return model


def effective_spec(applied: AGPOJobSpec, current: AGPOJobSpec) -> AGPOJobSpec:
    """The running spec with the requested values of the mutable fields (not below a floor)."""
    spec = applied
    for f in MUTABLE:
        value = _value(current, f.path)
        least = f.least(applied)
        spec = _replace(spec, f.path, value if least is None else max(value, least))
    return spec


class SpecResolution(NamedTuple):
    """The spec to act on, and the refused changes with the reason to report them under."""

    spec: AGPOJobSpec | None
    refused: tuple[str, ...] = ()
    reason: Reason = Reason.IMMUTABLE_FIELD


def needs_applied(job: AGPOJob | None, status: Mapping[str, Any], generation: int) -> bool:
    """Whether resolving the spec needs the one the children were built from: the children
    exist and the spec changed (or a refused change is still reported)."""
    if not is_true(status, ConditionType.CREATED):
        return False
    unchanged = generation == status.get("observedGeneration")
    return not (
        job is not None and unchanged and not is_true(status, ConditionType.SPEC_CHANGE_REFUSED)
    )


def resolve_spec(
    job: AGPOJob | None,
    problems: tuple[str, ...],
    status: Mapping[str, Any],
    generation: int,
    applied: AGPOJobSpec | None,
) -> SpecResolution:
    """The spec to act on; ``applied`` is the spec the children were built from (None: not
    needed, see :func:`needs_applied`, or its ConfigMap is gone)."""
    current = job.spec if job else None
    if not needs_applied(job, status, generation):
        return SpecResolution(current)
    if applied is None:  # the ConfigMap is gone: trust the current spec
        return SpecResolution(current, problems, Reason.INVALID_SPEC)
    if job is None:
        invalid = tuple(f"invalid spec change: {p}" for p in problems)
        return SpecResolution(applied, invalid, Reason.INVALID_SPEC)
    changes = immutable_changes(applied, job.spec)
    if not changes:
        return SpecResolution(job.spec)
    return SpecResolution(effective_spec(applied, job.spec), tuple(changes))
