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
        if not urls:
            raise ValueError("WeightSyncer needs at least one server URL")
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

    def _each(self, fn: Callable[[Server], T], *, wait_all: bool = False) -> list[T]:
        """Run `fn` on every server concurrently and raise the first error. Unless
        `wait_all`, the other calls are not waited for (their own timeouts end them)."""
        pool = ThreadPoolExecutor(max_workers=len(self.servers), thread_name_prefix="wsync")
        try:
            futures = [pool.submit(fn, s) for s in self.servers]
            if wait_all:
                wait(futures)
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _each_for_transport(self, fn: Callable[[Server], T], *, wait_all: bool = False) -> list[T]:
        if self.transport.parallel:
            return self._each(fn, wait_all=wait_all)
        return [fn(server) for server in self.servers]

    # --- init ----------------------------------------------------------------------

    def init(self) -> None:
        """Join every server's transfer group. Servers must be up (waited for here)."""
        nonce = uuid.uuid4().hex[:8]  # fresh store keys on every (re-)init
        self._each(self._discover)
        self.master_port = self.transport.listen()
        self._each_for_transport(lambda s: self.transport.init(s, f"{nonce}-{s.index}"))
        self._initialized = True
        logger.info(
            "weight sync ready: backend=%s servers=%d rendezvous=%s:%d",
            self.backend,
            len(self.servers),
            self.master_address,
            self.master_port,
        )

    def _discover(self, server: Server) -> None:
        data = self.calls(
            server, "GET", "/get_world_size", timeout_s=self.ready_timeout_s, retry=True
        )
        server.workers = int(data["world_size"])

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
        stay paused with partially loaded weights, so the next push joins again first
        (`push_weights` in the loop resyncs).
        """
        if not self._initialized:
            raise WeightSyncError("WeightSyncer.init() must succeed before push()")
        stats = SyncStats(version=version)
        start = time.perf_counter()
        try:
            payload = self.transport.prepare(model)
            stats.pack_s = time.perf_counter() - start
            stats.bytes = payload.nbytes
            t = time.perf_counter()
            # wait_all: when one server fails, the others' pushes still end (each is
            # bounded by its timeout) before this raises, so none is left mid-push.
            answers: list[PushAnswer] = self._each_for_transport(
                lambda s: self.transport.push(s, payload, str(version), self.pause_mode),
                wait_all=True,
            )
            stats.transfer_s = time.perf_counter() - t
        except Exception:
            # The groups are in an unknown state; the next push must re-init.
            self._initialized = False
            raise
        stale = {
            s.url: a.version
            for s, a in zip(self.servers, answers, strict=True)
            if a.version != str(version)
        }
        if stale:
            raise WeightSyncError(
                f"weight sync: servers report versions {stale} after pushing {version}"
            )
        slowest = max(answers, key=lambda a: sum(a.phases.values()))
        stats.server_phases = dict(slowest.phases)
        stats.pause_s = slowest.phases.get("pause", 0.0)
        stats.resume_verify_s = slowest.phases.get("resume", 0.0)
        stats.total_s = time.perf_counter() - start
        self.last = stats
        logger.info(
            "pushed weight version %d (%.1f MB) to %d server(s) in %.3fs",
            version,
            stats.bytes / 1e6,
            len(self.servers),
            stats.total_s,
        )
        return stats.total_s

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

    def resync(self, model: Weights, version: int) -> float:
        """Join every server again (a new process has no group with this one; the live ones
        get a fresh group, which a re-init always makes) and push ``model`` as ``version``;
        the seconds it took."""
        start = time.perf_counter()
        self.close()
        self.init()
        self.push(model, version)
        return time.perf_counter() - start

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


__all__ = ["BACKENDS", "SyncStats", "WeightSyncer", "default_master_address"]
