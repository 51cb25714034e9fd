"""The operator's Prometheus metrics (prefix ``agpo_operator_``); the one module that owns them.

Counters end in ``_total`` on the wire (prometheus_client appends it). They live in their own
registry, so a process that also runs the trainer (``agpo run``) never mixes the two sets.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from agpo_api.vocabulary import Phase
from agpo_operator.actions import Outcome

PREFIX = "agpo_operator"
REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_CREATED = Counter(
    f"{PREFIX}_jobs_created", "AGPOJobs whose children the operator created.", registry=REGISTRY
)
JOBS_SUCCEEDED = Counter(
    f"{PREFIX}_jobs_succeeded", "AGPOJobs that finished successfully.", registry=REGISTRY
)
JOBS_FAILED = Counter(
    f"{PREFIX}_jobs_failed", "AGPOJobs that failed, by reason.", ["reason"], registry=REGISTRY
)
JOBS_RESTARTED = Counter(
    f"{PREFIX}_jobs_restarted",
    "Trainer group restarts (after a failed trainer pod, or a rollout pod before it ran).",
    registry=REGISTRY,
)
ROLLOUT_PODS_REPLACED = Counter(
    f"{PREFIX}_rollout_pods_replaced",
    "Failed vLLM pods of running jobs deleted for their StatefulSet to recreate (no restart).",
    registry=REGISTRY,
)
JOBS_BY_PHASE = Gauge(
    f"{PREFIX}_jobs", "AGPOJobs served by this operator, by phase.", ["phase"], registry=REGISTRY
)
RECONCILE_SECONDS = Histogram(
    f"{PREFIX}_reconcile_duration_seconds",
    "Time one reconciliation of one AGPOJob took (API reads, decisions, writes).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    f"{PREFIX}_reconcile_errors", "Reconciliations that raised an error.", registry=REGISTRY
)
PHASES = tuple(phase.value for phase in Phase)

# Outcome (from agpo_operator.actions.Decision.counters) -> how to count it.
_OUTCOMES: dict[Outcome, Callable[[str], None]] = {
    Outcome.CREATED: lambda reason: JOBS_CREATED.inc(),
    Outcome.SUCCEEDED: lambda reason: JOBS_SUCCEEDED.inc(),
    Outcome.FAILED: lambda reason: JOBS_FAILED.labels(reason=reason or "Unknown").inc(),
    Outcome.RESTARTED: lambda reason: JOBS_RESTARTED.inc(),
    Outcome.REPLACED: lambda reason: ROLLOUT_PODS_REPLACED.inc(),
}


def count(outcome: Outcome, reason: str = "") -> None:
    """Count one job outcome (``created``, ``succeeded``, ``failed``, ``restarted``,
    ``replaced``)."""
    _OUTCOMES[outcome](reason)


class PhaseTracker:
    """The phase of every job this process serves, exported as ``agpo_operator_jobs{phase}``."""

    def __init__(self, gauge: Gauge = JOBS_BY_PHASE) -> None:
        self._gauge = gauge
        self._phases: dict[tuple[str, str], str] = {}
        for phase in PHASES:
            gauge.labels(phase=phase).set(0)

    def set(self, key: tuple[str, str], phase: str | None) -> None:
        old = self._phases.get(key)
        if old == phase:
            return
        if old is not None:
            self._gauge.labels(phase=old).dec()
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase
            self._gauge.labels(phase=phase).inc()

    def forget(self, key: tuple[str, str]) -> None:
        self.set(key, None)

    def __len__(self) -> int:
        return len(self._phases)


def serve(port: int) -> None:
    """Expose ``/metrics`` on ``port`` (in a background thread); 0 = do not serve."""
    if port:
        start_http_server(port, registry=REGISTRY)
