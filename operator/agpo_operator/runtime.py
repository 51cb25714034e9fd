"""The operator's process-wide state: configuration, API client, one loop per job.

Created by the startup handler and kept in kopf's ``memo`` (``memo.agpo``), so the handlers in
:mod:`agpo_operator.handlers` stay one-line delegates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from agpo_api.vocabulary import FINALIZER
from agpo_operator import kube, metrics
from agpo_operator.actions import Event
from agpo_operator.builders import BuildOptions
from agpo_operator.config import Config
from agpo_operator.loop import JobLoop

API_GROUP_CACHE_SECONDS = 300.0
Logger = logging.Logger | logging.LoggerAdapter[Any]


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf settings the operator relies on (see docs/operator.md, RBAC)."""
    settings.persistence.finalizer = FINALIZER
    settings.posting.reporting_component = "agpo-operator"
    settings.posting.level = logging.WARNING
    # Serve only what exists at startup: no list/watch of CRDs and namespaces (less RBAC).
    settings.scanning.disabled = True
    # A stopped job loop exits within its current API call; give it that long before kopf
    # falls back to cancelling (and re-checking 10 s later).
    settings.background.instant_exit_timeout = 2.0
    # kopf logs "Handler ... succeeded" at INFO for every watch event (every pod status
    # change); the operator's own object messages are warnings.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


class Runtime:
    """Everything the handlers share."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.options: BuildOptions = config.build_options()
        self.reconcilers: dict[tuple[str, str], JobLoop] = {}
        self.phases = metrics.PhaseTracker()
        self._kube: kube.Kube | None = None
        self._http: aiohttp.ClientSession | None = None
        self._groups: tuple[float, set[str]] | None = None

    @classmethod
    def start(cls, settings: kopf.OperatorSettings) -> Runtime:
        config = Config.from_env()
        configure_kopf(settings)
        metrics.serve(config.metrics_port)
        return cls(config)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._kube is not None:
            await self._kube.close()

    # ------------------------------------------------------------------ clients
    def login(self) -> Any:
        """kopf's login (at start, and again when the API answers 401): the same credentials
        for kopf's watches and our API client."""
        configuration = kube.load_configuration()
        old, self._kube = (
            self._kube,
            kube.Kube(
                configuration,
                workers=self.config.api_workers,
                timeout=self.config.api_timeout_seconds,
            ),
        )
        if old is not None:
            old.retire()  # calls in flight finish on the old client
        return kube.connection_info(configuration)

    @property
    def kube(self) -> kube.Kube:
        if self._kube is None:
            raise RuntimeError("not logged in to the Kubernetes API yet")
        return self._kube

    def http(self) -> aiohttp.ClientSession:
        """The session for trainer /status polls (short timeouts; never the API server)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3.0))
        return self._http

    async def has_api_group(self, group: str) -> bool:
        now = time.monotonic()
        if self._groups is None or now - self._groups[0] > API_GROUP_CACHE_SECONDS:
            self._groups = (now, await self.kube.api_groups())
        return group in self._groups[1]

    # ------------------------------------------------------------------ jobs
    async def run_job(self, body: Mapping[str, Any], stopped: Any, logger: Logger) -> None:
        """The daemon of one AGPOJob: runs until kopf stops it (deletion, shutdown, pausing)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        loop = JobLoop(self, *key)
        self.reconcilers[key] = loop
        try:
            await loop.run(body, stopped, logger)
        finally:
            if self.reconcilers.get(key) is loop:
                del self.reconcilers[key]
                self.phases.forget(key)

    def notify_job(self, body: Mapping[str, Any]) -> None:
        """A watch event of an AGPOJob: wake its loop when the spec, the finalizer or the
        deletion changed (not for its own status writes)."""
        meta = body.get("metadata", {})
        loop = self.reconcilers.get((meta.get("namespace"), meta.get("name")))
        if loop is not None:
            loop.notice(meta)

    def wake(self, namespace: str | None, job: str | None) -> None:
        """A watch event of a child (pod, Job): wake the owning job's loop."""
        loop = self.reconcilers.get((namespace or "", job or ""))
        if loop is not None:
            loop.wake()

    def probe(self) -> int:
        """For the liveness endpoint: how many jobs this process reconciles."""
        return len(self.reconcilers)

    def post_event(self, body: Mapping[str, Any], event: Event) -> None:
        kopf.event(body, type=event.type.value, reason=event.reason.value, message=event.message)  # type: ignore[arg-type]
