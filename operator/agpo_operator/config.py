"""The operator's configuration: one documented object, read from the environment at startup.

Every setting has a default that works in a cluster installed from ``manifests/`` or the Helm
chart; ``docs/operator.md`` lists them. A malformed value fails the start with a message naming
the variable (``ConfigError``), never later in the middle of a reconcile.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata

from agpo_operator.builders.common import BuildOptions

DEFAULT_STATUS_URL = "http://{job}-trainer-0.{job}-trainer.{namespace}.svc:{port}/status"


class ConfigError(ValueError):
    """An environment variable holds a value the operator cannot use."""


def _version() -> str:
    try:
        return metadata.version("agpo")
    except metadata.PackageNotFoundError:  # running from a source tree without an install
        return "latest"


def _default_image(component: str) -> str:
    return f"ghcr.io/agpo-dev/agpo-{component}:{_version()}"


@dataclass(frozen=True)
class Config:
    """What the operator watches, which defaults it gives pods, and how often it looks.

    Attributes map one to one to ``AGPO_*`` environment variables (see :data:`ENV`).
    """

    namespaces: tuple[str, ...] = ()
    """``AGPO_WATCH_NAMESPACES``: comma-separated namespaces to serve; empty = cluster-wide."""
    trainer_image: str = field(default_factory=lambda: _default_image("trainer"))
    """``AGPO_TRAINER_IMAGE``: trainer image when ``spec.trainer.image`` is unset."""
    rollout_image: str = field(default_factory=lambda: _default_image("rollout"))
    """``AGPO_ROLLOUT_IMAGE``: vLLM image when ``spec.rollout.image`` is unset."""
    image_pull_policy: str | None = None
    """``AGPO_IMAGE_PULL_POLICY``: Always, IfNotPresent or Never; unset = Kubernetes' default."""
    health_port: int = 8080
    """``AGPO_HEALTH_PORT``: liveness endpoint ``/healthz`` (kopf's probe server); 0 = off."""
    metrics_port: int = 9090  # the chart and manifests expose this port
    """``AGPO_METRICS_PORT``: Prometheus ``/metrics`` of the operator; 0 = off."""
    peering: str = ""
    """``AGPO_PEERING``: kopf peering object name; empty = standalone (one replica, Recreate)."""
    peering_priority: int = 0
    """``AGPO_PEERING_PRIORITY``: this replica's peering priority (give replicas distinct ones)."""
    operator_namespace: str = "agpo-system"
    """``AGPO_OPERATOR_NAMESPACE``: where the operator runs (admitted to trainer /status)."""
    monitoring_namespace: str = ""
    """``AGPO_MONITORING_NAMESPACE``: namespace admitted to the metrics ports; empty = none."""
    ephemeral_ports: tuple[int, int] | None = (32768, 60999)
    """``AGPO_EPHEMERAL_PORTS``: ``LOW-HIGH`` port range NCCL/Gloo data connections use between
    a job's pods (Linux' default ``ip_local_port_range``); ``none`` = do not admit a range."""
    status_url: str = DEFAULT_STATUS_URL
    """``AGPO_TRAINER_STATUS_URL``: where rank 0 serves JSON progress; ``{job}``,
    ``{namespace}`` and ``{port}`` (``spec.metrics.port``) are filled in."""
    status_poll_seconds: float = 15.0
    """``AGPO_STATUS_POLL_SECONDS``: how often a running job's trainer ``/status`` is read."""
    resync_seconds: float = 60.0
    """``AGPO_RESYNC_SECONDS``: a job is re-examined at least this often without any event."""
    api_workers: int = 16
    """``AGPO_API_WORKERS``: threads (and pooled connections) for Kubernetes API calls."""
    api_timeout_seconds: float = 30.0
    """``AGPO_API_TIMEOUT_SECONDS``: read timeout of one Kubernetes API call."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read every ``AGPO_*`` variable; unset or empty ones keep their defaults."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, (attr, parse) in ENV.items():
            raw = env.get(name, "").strip()
            if raw == "":
                continue
            try:
                values[attr] = parse(raw)
            except ValueError as err:
                raise ConfigError(f"{name}={raw!r}: {err}") from None
        return dataclasses.replace(cls(), **values)  # type: ignore[arg-type]

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def build_options(self) -> BuildOptions:
        """The part of the configuration that shapes child objects (given to the builders)."""
        return BuildOptions(
            trainer_image=self.trainer_image,
            rollout_image=self.rollout_image,
            image_pull_policy=self.image_pull_policy,
            operator_namespace=self.operator_namespace,
            monitoring_namespace=self.monitoring_namespace or None,
            ephemeral_ports=self.ephemeral_ports,
        )

    def status_url_for(self, job: str, namespace: str, port: int) -> str:
        return self.status_url.format(job=job, namespace=namespace, port=port)


def _namespaces(raw: str) -> tuple[str, ...]:
    return tuple(sorted({n.strip() for n in raw.split(",") if n.strip()}))


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError("must be a port number (0 to disable)")
    return port


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _pull_policy(raw: str) -> str:
    if raw not in {"Always", "IfNotPresent", "Never"}:
        raise ValueError("must be Always, IfNotPresent or Never")
    return raw


def _port_range(raw: str) -> tuple[int, int] | None:
    if raw.lower() == "none":
        return None
    low, sep, high = raw.partition("-")
    if not sep:
        raise ValueError("must look like 32768-60999 (or none)")
    lo, hi = int(low), int(high)
    if not 1 <= lo < hi <= 65535:
        raise ValueError("must be LOW-HIGH with 1 <= LOW < HIGH <= 65535")
    return lo, hi


def _status_url(raw: str) -> str:
    try:
        raw.format(job="j", namespace="n", port=1)
    except (KeyError, IndexError) as err:
        raise ValueError(
            f"unknown placeholder {err}; use {{job}}, {{namespace}}, {{port}}"
        ) from None
    return raw


# environment variable -> (Config attribute, parser)
ENV: dict[str, tuple[str, Callable[[str], object]]] = {
    "AGPO_WATCH_NAMESPACES": ("namespaces", _namespaces),
    "AGPO_TRAINER_IMAGE": ("trainer_image", str),
    "AGPO_ROLLOUT_IMAGE": ("rollout_image", str),
    "AGPO_IMAGE_PULL_POLICY": ("image_pull_policy", _pull_policy),
    "AGPO_HEALTH_PORT": ("health_port", _port),
    "AGPO_METRICS_PORT": ("metrics_port", _port),
    "AGPO_PEERING": ("peering", str),
    "AGPO_PEERING_PRIORITY": ("peering_priority", int),
    "AGPO_OPERATOR_NAMESPACE": ("operator_namespace", str),
    "AGPO_MONITORING_NAMESPACE": ("monitoring_namespace", str),
    "AGPO_EPHEMERAL_PORTS": ("ephemeral_ports", _port_range),
    "AGPO_TRAINER_STATUS_URL": ("status_url", _status_url),
    "AGPO_STATUS_POLL_SECONDS": ("status_poll_seconds", _positive_float),
    "AGPO_RESYNC_SECONDS": ("resync_seconds", _positive_float),
    "AGPO_API_WORKERS": ("api_workers", _positive_int),
    "AGPO_API_TIMEOUT_SECONDS": ("api_timeout_seconds", _positive_float),
}
