"""Spec changes on a live job: which fields may change, which edits are refused (pure).

Only the run-policy fields below may change once the children exist; every other change is
refused (``SpecChangeRefused``) and the job keeps running with the spec it was built from
(stored in its ConfigMap).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from agpo_api import AGPOJob, AGPOJobSpec
from agpo_api.vocabulary import ConditionType, Reason
from agpo_operator.conditions import is_true

# Run-policy fields a user may change on a live job; every other spec field is immutable.
MUTABLE_RUN_POLICY = (
    "suspend", "active_deadline_seconds", "ttl_seconds_after_finished", "backoff_limit",
    "clean_pod_policy", "startup_timeout_seconds", "progress_timeout_seconds",
)  # fmt: skip


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def _without_mutable(spec: AGPOJobSpec) -> dict[str, Any]:
    data = spec.to_dict()
    run_policy = data.get("runPolicy", {})
    for name in MUTABLE_RUN_POLICY:
        alias = AGPOJobSpec.model_fields["run_policy"].annotation.model_fields[name].alias  # type: ignore[union-attr]
        run_policy.pop(alias or name, None)
    return data


def immutable_changes(applied: AGPOJobSpec, current: AGPOJobSpec) -> list[str]:
    """One line per immutable field that differs between the running and the requested spec."""
    old = _leaves(_without_mutable(applied), "spec")
    new = _leaves(_without_mutable(current), "spec")
    out = []
    for path in sorted(set(old) | set(new)):
        if old.get(path) != new.get(path):
            out.append(f"{path} cannot change on a live job (running: {old.get(path)!r}, "
                       f"requested: {new.get(path)!r})")  # fmt: skip
    return out


def effective_spec(applied: AGPOJobSpec, current: AGPOJobSpec) -> AGPOJobSpec:
    """The running spec with the requested values of the mutable run-policy fields."""
    updates = {name: getattr(current.run_policy, name) for name in MUTABLE_RUN_POLICY}
    run_policy = applied.run_policy.model_copy(update=updates)
    return applied.model_copy(update={"run_policy": run_policy})


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
