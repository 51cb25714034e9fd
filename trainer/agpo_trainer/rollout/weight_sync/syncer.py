"""The orchestrator: one push = pack once, let the transport push into every server at
once (pause, load, resume: one HTTP round trip per server with gloo), check the served
versions. What moves the bytes is a `Transport` (gloo or nccl).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from agpo_api.env import EnvVar
from agpo_api.layout import WEIGHT_SYNC_PORT
from agpo_rollout.wire import DEFAULT_BUCKET_BYTES, PAUSE_MODES
from agpo_trainer.rollout.weight_sync.gloo import GlooTransport
from agpo_trainer.rollout.weight_sync.nccl import NcclTransport
from agpo_trainer.rollout.weight_sync.transport import (
    PushAnswer,
    Server,
    ServerCalls,
    Transport,
    Weights,
    WeightSyncError,
)

logger = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")

T = TypeVar("T")


@dataclass
class SyncStats:
    """Timings of the last push (seconds) and its payload size.

    `transfer_s` is every server's round trip (all at once), from the first byte sent to
    the last answer; `pause_s` and `resume_verify_s` are the slowest server's own pause
    and resume inside it, `server_phases` that server's whole split as it measured it.
    """

    version: int = -1
    total_s: float = 0.0
    pause_s: float = 0.0
    pack_s: float = 0.0
    transfer_s: float = 0.0
    resume_verify_s: float = 0.0
    bytes: int = 0
    server_phases: dict[str, float] = field(default_factory=dict)


@dataclass
class PushRound:
    """One push into a set of servers: each server's answer or error, and its seconds."""

    answers: dict[str, PushAnswer] = field(default_factory=dict)
    errors: dict[str, Exception] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    stats: SyncStats = field(default_factory=SyncStats)

    def served(self, version: int) -> list[str]:
        """The servers that answered and now serve ``version``."""
        return [u for u, a in self.answers.items() if a.version == str(version)]

    def missed(self, version: int) -> dict[str, str]:
        """``{server: why}`` of the servers that do not serve ``version`` after the push."""
        out = {u: f"{type(e).__name__}: {e}" for u, e in self.errors.items()}
        out.update(
            {
                u: f"reports version {a.version} after pushing {version}"
                for u, a in self.answers.items()
                if a.version != str(version)
            }
        )
        return out


def default_master_address() -> str:
    """How rollout workers reach this process: $AGPO_WEIGHT_SYNC_HOST, else $POD_IP,
    else this host's resolved name."""
    for var in (EnvVar.WEIGHT_SYNC_HOST.value, "POD_IP"):
        if os.environ.get(var):
            return os.environ[var]
    return socket.gethostbyname(socket.gethostname())


def default_master_port() -> int:
    """$AGPO_WEIGHT_SYNC_PORT, else the contract's default."""
    port = os.environ.get(EnvVar.WEIGHT_SYNC_PORT.value)
    return int(port) if port is not None else WEIGHT_SYNC_PORT


class WeightSyncer:
    """Pushes a policy's weights into every vLLM server and checks the served version."""

    def __init__(
        self,
        urls: Sequence[str],
        token: str | None = None,
        *,
        backend: str = "gloo",
        master_address: str | None = None,
        master_port: int | None = None,
        timeout_s: float = 120.0,
        ready_timeout_s: float = 300.0,
        pause_mode: str = "wait",
        max_bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        cast_dtype: torch.dtype | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown weight sync backend {backend!r}; valid: {BACKENDS}")
        if pause_mode not in PAUSE_MODES:
            raise ValueError(f"pause_mode must be wait, abort or keep, got {pause_mode!r}")
        self.servers = [Server(u.rstrip("/"), index=i) for i, u in enumerate(urls)]
        self.token = token
        self.backend = backend
        self.master_address = master_address or default_master_address()
        self.master_port = master_port if master_port is not None else default_master_port()
        self.timeout_s = timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.pause_mode = pause_mode
        self.calls = ServerCalls(token, timeout_s, prefix=f"weight sync ({backend})")
        self.transport: Transport
        if backend == "gloo":
            self.transport = GlooTransport(
                self.calls,
                master_address=self.master_address,
                master_port=self.master_port,
                timeout_s=timeout_s,
                max_bucket_bytes=max_bucket_bytes,
                cast_dtype=cast_dtype,
            )
        else:
            self.transport = NcclTransport(
                self.calls,
                cast_dtype=cast_dtype,
                token=token,
                master_address=self.master_address,
                master_port=self.master_port,
                timeout_s=timeout_s,
            )
        self.last = SyncStats()
        self._initialized = False

    # --- running on every server ----------------------------------------------------

    def _each(
        self,
        fn: Callable[[Server], T],
        *,
        wait_all: bool = False,
        servers: Sequence[Server] | None = None,
    ) -> list[T]:
        """Run `fn` on every server (or on `servers`) concurrently and raise the first error.
        Unless `wait_all`, the other calls are not waited for (their own timeouts end them)."""
        targets = self.servers if servers is None else list(servers)
        if not targets:
            return []
        pool = ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="wsync")
        try:
            futures = [pool.submit(fn, s) for s in targets]
            if wait_all:
                wait(futures)
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _each_for_transport(
        self,
        fn: Callable[[Server], T],
        *,
        wait_all: bool = False,
        servers: Sequence[Server] | None = None,
    ) -> list[T]:
        if self.transport.parallel:
            return self._each(fn, wait_all=wait_all, servers=servers)
        return [fn(server) for server in (self.servers if servers is None else servers)]

    def _settle(
        self, fn: Callable[[Server], T], servers: Sequence[Server]
    ) -> tuple[dict[str, T], dict[str, Exception], dict[str, float]]:
        """Run `fn` on each of `servers` (at once when the transport allows), every call
        to its end: `({url: result}, {url: error}, {url: seconds})`, never raising."""
        results: dict[str, T] = {}
        errors: dict[str, Exception] = {}
        seconds: dict[str, float] = {}

        def settled(server: Server) -> None:
            start = time.perf_counter()
            try:
                results[server.url] = fn(server)
            except Exception as exc:  # each server's own failure, reported by its URL
                errors[server.url] = exc
            seconds[server.url] = time.perf_counter() - start

        self._each_for_transport(settled, wait_all=True, servers=servers)
        return results, errors, seconds

    # --- the set of servers (an elastic pool adds and removes) ---------------------------

    def add(self, url: str) -> Server:
        """A new server, not joined yet (:meth:`join`)."""
        # The lowest index no current server has: nccl's port is weightSync.port + index, so
        # the ports stay within the pool's size (a group name also has a fresh nonce).
        taken = {s.index for s in self.servers}
        server = Server(url.rstrip("/"), index=min(set(range(len(taken) + 1)) - taken))
        self.servers.append(server)
        return server

    def remove(self, server: Server) -> None:
        """Forget ``server`` and its group."""
        self.transport.drop(server)
        self.servers = [s for s in self.servers if s is not server]

    def join(self, servers: Sequence[Server], *, ready_timeout_s: float) -> dict[str, Exception]:
        """Join each of ``servers`` in a fresh group (dropping any group it had), waiting up
        to ``ready_timeout_s`` for it to answer; ``{url: error}`` of those that did not."""
        nonce = uuid.uuid4().hex[:8]
        self.master_port = self.transport.listen()

        def one(server: Server) -> None:
            self.transport.drop(server)
            data = self.calls(
                server, "GET", "/get_world_size", timeout_s=ready_timeout_s, retry=True
            )
            server.workers = int(data["world_size"])
            self.transport.init(server, f"{nonce}-{server.index}")

        _, errors, _ = self._settle(one, servers)
        self._initialized = True
        return errors

    # --- init ----------------------------------------------------------------------

    def init(self) -> None:
        """Join every server's transfer group. Servers must be up (waited for here)."""
        if not self.servers:
            raise WeightSyncError("weight sync: no rollout server to join")
        errors = self.join(self.servers, ready_timeout_s=self.ready_timeout_s)
        if errors:
            self._initialized = False
            raise next(iter(errors.values()))
        logger.info(
            "weight sync ready: backend=%s servers=%d rendezvous=%s:%d",
            self.backend,
            len(self.servers),
            self.master_address,
            self.master_port,
        )

    # --- push ----------------------------------------------------------------------

    def push(self, model: Weights, version: int) -> float:
        """Send `model`'s parameters (or a full state dict) to every server as `version`.

        Names must be the Hugging Face checkpoint names (wrapper prefixes `module.` and
        `_orig_mod.` are stripped). Sharded DTensors are gathered with `full_tensor()`,
        a collective: with FSDP pass a full state dict gathered on all ranks instead.

        Returns the wall time in seconds (pack to verified resume on every server). With
        gloo each server gets one HTTP round trip (the plugin's `/agpo/push_weights`:
        pause, load, resume, version) while the buckets, packed once, are broadcast to
        all servers at once. Raises `WeightSyncError` on any failure; a server may then
        stay paused with partially loaded weights, so it must be joined again first (the
        trainer's pool uses :meth:`push_each` and lets such a server lag instead).
        """
        if not self._initialized:
            raise WeightSyncError("WeightSyncer.init() must succeed before push()")
        try:
            round_ = self.push_each(model, version, self.servers)
        except Exception:
            self._initialized = False  # packing failed: the groups' state is unknown
            raise
        if round_.errors:
            # The groups are in an unknown state; the next push must re-init.
            self._initialized = False
            raise next(iter(round_.errors.values()))
        missed = round_.missed(version)
        if missed:
            stale = {u: round_.answers[u].version for u in missed}
            raise WeightSyncError(
                f"weight sync: servers report versions {stale} after pushing {version}"
            )
        logger.info(
            "pushed weight version %d (%.1f MB) to %d server(s) in %.3fs",
            version,
            round_.stats.bytes / 1e6,
            len(self.servers),
            round_.stats.total_s,
        )
        return round_.stats.total_s

    def push_each(self, model: Weights, version: int, servers: Sequence[Server]) -> PushRound:
        """Push ``model`` as ``version`` into each of ``servers`` (packed once, all at once),
        every push to its end or its timeout; never raises for a server's failure. A server
        that failed keeps a group in an unknown state: :meth:`join` it again first."""
        round_ = PushRound(stats=SyncStats(version=version))
        if not servers:
            return round_
        start = time.perf_counter()
        payload = self.transport.prepare(model)
        round_.stats.pack_s = time.perf_counter() - start
        round_.stats.bytes = payload.nbytes
        t = time.perf_counter()
        round_.answers, round_.errors, round_.seconds = self._settle(
            lambda s: self.transport.push(s, payload, str(version), self.pause_mode), servers
        )
        round_.stats.transfer_s = time.perf_counter() - t
        if round_.answers:
            slowest = max(round_.answers.values(), key=lambda a: sum(a.phases.values()))
            round_.stats.server_phases = dict(slowest.phases)
            round_.stats.pause_s = slowest.phases.get("pause", 0.0)
            round_.stats.resume_verify_s = slowest.phases.get("resume", 0.0)
        round_.stats.total_s = time.perf_counter() - start
        self.last = round_.stats
        return round_

    # --- served weights, verified --------------------------------------------------------

    def lagging(self, version: int) -> dict[str, str]:
        """``{url: served version}`` of the servers not serving ``version``: one GET per
        server. A replaced server (a rollout pod recreated, a local server restarted) serves
        its initial weights under no version. A server that does not answer yet (starting
        again) is waited for, up to ``ready_timeout_s``, then this raises."""
        answers = self._each(
            lambda s: self.calls(
                s, "GET", "/weight_info", timeout_s=self.ready_timeout_s, retry=True
            )
        )
        served = {
            s.url: str(a.get("weight_version")) for s, a in zip(self.servers, answers, strict=True)
        }
        return {url: v for url, v in served.items() if v != str(version)}

    # --- queries / teardown ------------------------------------------------------------

    def weight_versions(self) -> dict[str, str]:
        """The weight version each server reports (`GET /weight_info`)."""
        answers = self._each(lambda s: self.calls(s, "GET", "/weight_info"))
        return {
            s.url: str(a.get("weight_version")) for s, a in zip(self.servers, answers, strict=True)
        }

    def close(self) -> None:
        self.transport.close()
        self._initialized = False

    def __enter__(self) -> WeightSyncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BACKENDS", "PushRound", "SyncStats", "WeightSyncer", "default_master_address"]
