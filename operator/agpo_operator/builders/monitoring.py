"""Metrics of the trainer: a Service for rank 0's metrics port and an optional PodMonitor.

Only rank 0 serves ``/metrics`` and ``/status``; both select the pod with completion index 0.
The PodMonitor needs the Prometheus Operator's ``monitoring.coreos.com`` API: the operator
creates it only where that API exists (else a Warning event; the job runs all the same).
"""

from __future__ import annotations

from agpo_api import AGPOJob, AGPOJobSpec
from agpo_api.vocabulary import Reason
from agpo_operator.builders.child import (
    SERVICE,
    Kind,
    OptionalApi,
    created,
)
from agpo_operator.builders.common import (
    COMPLETION_INDEX,
    JOB_LABEL,
    BuildOptions,
    Names,
    Obj,
    metadata,
    selector_labels,
)

PODMONITOR_API_GROUP = "monitoring.coreos.com"


def rank0_selector(n: Names) -> dict[str, str]:
    return {**selector_labels(n.job, "trainer"), COMPLETION_INDEX: "0"}


def build_metrics_service(job: AGPOJob, n: Names, options: BuildOptions) -> Obj:
    port = job.spec.metrics.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(n, n.metrics, "metrics"),
        "spec": {
            "type": "ClusterIP",
            "selector": rank0_selector(n),
            "ports": [
                {"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}
            ],
        },
    }


def build_pod_monitor(job: AGPOJob, n: Names, options: BuildOptions) -> Obj | None:
    """A PodMonitor scraping rank 0, or None when ``spec.metrics.podMonitor`` is false."""
    if not job.spec.metrics.pod_monitor:
        return None
    return {
        "apiVersion": f"{PODMONITOR_API_GROUP}/v1",
        "kind": "PodMonitor",
        "metadata": metadata(n, n.metrics, "metrics"),
        "spec": {
            "selector": {"matchLabels": rank0_selector(n)},
            "podTargetLabels": [JOB_LABEL],
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
        },
    }


def _no_prometheus_operator(spec: AGPOJobSpec, n: Names) -> str:
    return (
        "spec.metrics.podMonitor is true but the monitoring.coreos.com API (Prometheus "
        "Operator) is not installed: no PodMonitor is created; the trainer still serves "
        f"metrics on port {spec.metrics.port} (Service {n.metrics})"
    )


METRICS_SERVICE = created(
    SERVICE, build_metrics_service, lambda n: n.metrics, "rank 0's metrics Service"
)
POD_MONITOR = created(
    Kind(f"{PODMONITOR_API_GROUP}/v1", "PodMonitor", "podmonitors"),
    build_pod_monitor,
    lambda n: n.metrics,
    "the optional PodMonitor (only where the Prometheus Operator is installed)",
    requires=OptionalApi(
        PODMONITOR_API_GROUP, Reason.POD_MONITOR_UNAVAILABLE, _no_prometheus_operator
    ),
)
