"""The vLLM servers of one ``agpo run``: ``rollout.replicas`` of them, started side by side,
waited for until healthy, and a dead one replaced on its own port (same URL: the trainer waits
for it and joins it again). Each runs in its own session, so stopping one stops its engine and
workers too (:class:`agpo_trainer.rollout.server.VLLMServer`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from agpo_api.models import AGPOJob
from agpo_trainer.local.console import say
from agpo_trainer.local.restarts import Restarts
from agpo_trainer.preflight import LaunchError
from agpo_trainer.rollout.server import ServerStartError, VLLMServer

if TYPE_CHECKING:
    from rich.console import Console

# Seconds a server may take to become healthy (default 300). Only `agpo run` reads it, so it is
# not one of the contract's `EnvVar`s (those are what one part sets for another).
START_TIMEOUT_ENV = "AGPO_SERVER_START_TIMEOUT"


class LocalServers:
    """The run's servers, in replica order (the order of the trainer's rollout URLs)."""

    def __init__(self, job: AGPOJob, model_dir: str, *, token: str, logs: Path) -> None:
        self._job = job
        self._model_dir = model_dir
        self._token = token
        self._logs = logs
        self._servers: list[VLLMServer] = []

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self._servers]

    def start(self) -> None:
        """Start every replica, then wait for each: they load the model at the same time."""
        replicas = self._job.spec.rollout.replicas
        # Extended one by one, so that stop() finds those started before a failing one.
        self._servers.extend(self._new(i).start() for i in range(replicas))
        for server in self._servers:
            _wait_ready(server)

    def replace_dead(self, restarts: Restarts, console: Console) -> None:
        """Start each server that has exited again on its port, counting one restart each
        (:class:`Restarts` raises when the budget is spent)."""
        for i, dead in self._dead():
            restarts.take(
                f"vLLM server {dead.url} died (exit {dead.poll()}); log: {dead.log_path}", console
            )
            dead.stop()  # whatever is left of its process group
            # In the list before it is healthy, so that stop() stops it if it never is.
            self._servers[i] = self._new(i, port=dead.port).start()
            _wait_ready(self._servers[i])
            say(console, f"agpo run: vLLM server {self._servers[i].url} is serving again")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()

    def _dead(self) -> Iterator[tuple[int, VLLMServer]]:
        # A generator: each server is polled when its turn comes, after the ones before it
        # were replaced (which takes as long as a start).
        for i, server in enumerate(self._servers):
            if server.poll() is not None:
                yield i, server

    def _new(self, index: int, port: int | None = None) -> VLLMServer:
        spec = self._job.spec
        return VLLMServer(
            self._model_dir,
            port=port,
            token=self._token,
            log_path=self._logs / f"vllm-{index}.log",
            device="cuda" if spec.rollout.gpus_per_replica else "cpu",
            dtype=spec.model.dtype,
            max_model_len=spec.rollout.max_model_len,
            gpu_memory_utilization=spec.rollout.gpu_memory_utilization,
            weight_transfer_backend=spec.rollout.weight_sync.backend,
            seed=spec.training.seed,
            extra_args=spec.rollout.extra_args,
        )


def _wait_ready(server: VLLMServer) -> None:
    """Wait until ``server`` is healthy, or raise one line naming it and its log."""
    try:
        server.wait_ready(float(os.environ.get(START_TIMEOUT_ENV, "300")))
    except ServerStartError as err:
        raise LaunchError(str(err).splitlines()[0] + f" (log: {server.log_path})") from None
