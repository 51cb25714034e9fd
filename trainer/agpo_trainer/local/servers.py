"""The vLLM servers of one ``agpo run``: ``rollout.replicas`` of them, started side by side,
waited for until healthy, and a dead one replaced on its own port (same URL: the trainer waits
for it and joins it again). Each runs in its own session, so stopping one stops its engine and
workers too (:class:`agpo_trainer.rollout.server.VLLMServer`).

The pool is elastic, as in a cluster: the healthy servers' URLs are written to
``<workdir>/rollout/servers`` (the trainer's ``file://`` discovery, read at each step
boundary), and the count asked for in ``<workdir>/rollout/replicas`` (``agpo scale``) is
followed while the run goes on: a new server is listed once healthy, a removed one is
unlisted before it is stopped."""

from __future__ import annotations

import os
import tempfile
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


def servers_file(workdir: Path) -> Path:
    """The run's discovery file: the URLs of the servers in the pool, one per line."""
    return workdir / "rollout" / "servers"


def replicas_file(workdir: Path) -> Path:
    """How many servers the run should have (``agpo scale`` writes it)."""
    return workdir / "rollout" / "replicas"


def read_replicas(workdir: Path) -> int | None:
    """The count ``agpo scale`` asked for; None when unset or unreadable."""
    try:
        text = replicas_file(workdir).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) >= 1 else None


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old or the new content, never half of it (a temporary file of its
    own per writer: `agpo scale` and `agpo run` may write the same file at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


class LocalServers:
    """The run's servers, in pool order (the order of the discovery file)."""

    def __init__(
        self, job: AGPOJob, model_dir: str, *, token: str, workdir: Path, replicas: int
    ) -> None:
        self._job = job
        self._model_dir = model_dir
        self._token = token
        self._workdir = workdir
        self._logs = workdir / "logs"
        self._replicas = replicas
        self._servers: list[VLLMServer] = []
        self._starting: list[VLLMServer] = []  # scaled up, not healthy yet
        self._next = 0  # log file index: never reused, so a log is one server's

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self._servers]

    @property
    def discovery(self) -> Path:
        return servers_file(self._workdir)

    def start(self) -> None:
        """Start every replica, then wait for each: they load the model at the same time."""
        write_atomically(replicas_file(self._workdir), f"{self._replicas}\n")
        # Extended one by one, so that stop() finds those started before a failing one.
        self._servers.extend(self._new().start() for _ in range(self._replicas))
        for server in self._servers:
            _wait_ready(server)
        self._publish()

    def follow_scale(self, console: Console) -> None:
        """Move towards the count in the replicas file: start servers (listed once healthy)
        or unlist and stop the newest ones. Never blocks on a starting server."""
        for server in list(self._starting):
            if server.poll() is not None:  # it died starting: say so, ask for what there is
                self._starting.remove(server)
                count = len(self._servers) + len(self._starting)
                say(console, f"agpo run: a new vLLM server failed to start (log: "
                             f"{server.log_path}); asking for {count}")  # fmt: skip
                write_atomically(replicas_file(self._workdir), f"{count}\n")
            elif server.healthy():
                self._starting.remove(server)
                self._servers.append(server)
                self._publish()
                say(console, f"agpo run: vLLM server {server.url} is up; the trainer joins it "
                             "at the next step")  # fmt: skip
        wanted = read_replicas(self._workdir)
        if wanted is None:
            return
        while len(self._servers) + len(self._starting) < wanted:
            self._starting.append(self._new().start())
            say(console, f"agpo run: starting vLLM server {self._starting[-1].url} "
                         f"({wanted} asked for)")  # fmt: skip
        while self._starting and len(self._servers) + len(self._starting) > wanted:
            self._starting.pop().stop()
        while len(self._servers) > wanted:
            gone = self._servers.pop()
            self._publish()  # unlisted first: the trainer drops it at its next boundary
            gone.stop()  # requests in flight to it go to the other servers
            say(console, f"agpo run: stopped vLLM server {gone.url} ({wanted} asked for)")

    def replace_dead(self, restarts: Restarts, console: Console) -> None:
        """Start each server that has exited again on its port, counting one restart each
        (:class:`Restarts` raises when the budget is spent)."""
        for i, dead in self._dead():
            restarts.take(
                f"vLLM server {dead.url} died (exit {dead.poll()}); log: {dead.log_path}", console
            )
            dead.stop()  # whatever is left of its process group
            # In the list before it is healthy, so that stop() stops it if it never is.
            self._servers[i] = self._new(port=dead.port).start()
            _wait_ready(self._servers[i])
            say(console, f"agpo run: vLLM server {self._servers[i].url} is serving again")

    def stop(self) -> None:
        # Unlisted first: the discovery file says a run's servers are up (`agpo scale` reads
        # its presence as "this run is running").
        self.discovery.unlink(missing_ok=True)
        for server in [*self._servers, *self._starting]:
            server.stop()

    def _publish(self) -> None:
        write_atomically(self.discovery, "".join(f"{u}\n" for u in self.urls))

    def _dead(self) -> Iterator[tuple[int, VLLMServer]]:
        # A generator: each server is polled when its turn comes, after the ones before it
        # were replaced (which takes as long as a start).
        for i, server in enumerate(self._servers):
            if server.poll() is not None:
                yield i, server

    def _new(self, port: int | None = None) -> VLLMServer:
        spec = self._job.spec
        index, self._next = self._next, self._next + 1
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
