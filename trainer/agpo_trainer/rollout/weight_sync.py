"""Trainer side of weight synchronisation into running vLLM servers.

One `push` = vLLM's native RL round trip on every server:

    POST /pause?mode=wait           in-flight requests finish, caches are cleared
    POST /start_weight_update       workers start a layerwise reload
    POST /update_weights            workers receive ...
         + broadcast from here      ... while this process sends the packed tensors
    POST /finish_weight_update      reload finalised, served version := policy version
    POST /resume
    GET  /weight_info               must now report the version, on every server

Backends: `gloo` (this project's plugin; CPU and GPU, TCP) and `nccl` (vLLM's; GPU only,
needs `vllm` in the trainer image). Both use one process group per server with this
process as rank 0 and the server's workers as ranks 1..n; see docs/weight-sync.md.
Every call has a timeout, so a dead server gives a `WeightSyncError` naming it, not a hang.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from agpo_rollout.gloo_common import (
    DEFAULT_BUCKET_BYTES,
    GlooSender,
    PackedWeights,
    normalize_name,
    pack_weights,
    trainer_store,
)
from agpo_trainer.rollout.http import HttpCallError, RetryPolicy, call

logger = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")
DEFAULT_SYNC_PORT = 29600
ADDRESS_ENV = "AGPO_WEIGHT_SYNC_HOST"
PORT_ENV = "AGPO_WEIGHT_SYNC_PORT"

T = TypeVar("T")


class WeightSyncError(RuntimeError):
    """A weight sync step failed; the message names the server and the step."""


@dataclass
class SyncStats:
    """Timings of the last push (seconds) and its payload size."""

    version: int = -1
    total_s: float = 0.0
    pause_s: float = 0.0
    pack_s: float = 0.0
    transfer_s: float = 0.0
    resume_verify_s: float = 0.0
    bytes: int = 0


@dataclass
class _Server:
    url: str
    workers: int = 1
    sender: GlooSender | None = None
    nccl_engine: Any = None
    client: HTTPWeightSyncClient | None = field(default=None, repr=False)


def default_master_address() -> str:
    """How rollout workers reach this process: $AGPO_WEIGHT_SYNC_HOST, else $POD_IP,
    else this host's resolved name."""
    for var in (ADDRESS_ENV, "POD_IP"):
        if os.environ.get(var):
            return os.environ[var]
    return socket.gethostbyname(socket.gethostname())


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
        if pause_mode not in ("wait", "abort", "keep"):
            raise ValueError(f"pause_mode must be wait, abort or keep, got {pause_mode!r}")
        if not urls:
            raise ValueError("WeightSyncer needs at least one server URL")
        self.servers = [_Server(u.rstrip("/")) for u in urls]
        self.token = token
        self.backend = backend
        self.master_address = master_address or default_master_address()
        port = master_port if master_port is not None else os.environ.get(PORT_ENV)
        self.master_port = int(port) if port is not None else DEFAULT_SYNC_PORT
        self.timeout_s = timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.pause_mode = pause_mode
        self.max_bucket_bytes = max_bucket_bytes
        self.cast_dtype = cast_dtype
        self.last = SyncStats()
        self._initialized = False

    # --- HTTP helpers ---------------------------------------------------------------

    def _call(
        self,
        server: _Server,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        retry: bool = False,
    ) -> Any:
        try:
            response = call(
                method,
                f"{server.url}{path}",
                token=self.token,
                timeout_s=timeout_s or self.timeout_s,
                json=json,
                params=params,
                policy=RetryPolicy() if retry else RetryPolicy(retry=False),
            )
        except HttpCallError as exc:
            raise WeightSyncError(f"weight sync ({self.backend}): {exc}") from None
        return response.json() if response.content else None

    def _each(self, fn: Callable[[_Server], T], *, wait_all: bool = False) -> list[T]:
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

    # --- init ----------------------------------------------------------------------

    def init(self) -> None:
        """Join every server's transfer group. Servers must be up (waited for here)."""
        nonce = uuid.uuid4().hex[:8]  # fresh store keys on every (re-)init
        self._each(self._discover)
        if self.backend == "gloo":
            store = trainer_store(self.master_port, timeout_s=self.timeout_s)
            self.master_port = store.port  # 0 -> the port actually bound
            self._each(lambda s: self._init_gloo(s, store, f"{nonce}-{self._index(s)}"))
        else:
            for s in self.servers:  # NCCL communicators are set up one at a time
                self._init_nccl(s)
        self._initialized = True
        logger.info(
            "weight sync ready: backend=%s servers=%d rendezvous=%s:%d",
            self.backend,
            len(self.servers),
            self.master_address,
            self.master_port,
        )

    def _index(self, server: _Server) -> int:
        return self.servers.index(server)

    def _discover(self, server: _Server) -> None:
        data = self._call(
            server, "GET", "/get_world_size", timeout_s=self.ready_timeout_s, retry=True
        )
        server.workers = int(data["world_size"])

    def _init_gloo(self, server: _Server, store: Any, group_name: str) -> None:
        world_size = 1 + server.workers
        init_info = {
            "master_address": self.master_address,
            "master_port": self.master_port,
            "group_name": group_name,
            "rank_offset": 1,
            "world_size": world_size,
            "timeout_s": self.timeout_s,
        }
        # The server answers only after its workers joined the group, and they need us in
        # it too: the HTTP call runs on a thread while we join as rank 0 here.
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            future = pool.submit(
                self._call,
                server,
                "POST",
                "/init_weight_transfer_engine",
                json={"init_info": init_info},
            )
            try:
                server.sender = GlooSender.open(store, group_name, world_size, self.timeout_s)
            except Exception as exc:
                # A failed rendezvous usually has a clearer cause on the server side.
                if future.done() and future.exception() is not None:
                    raise future.exception() from exc  # type: ignore[misc]
                raise WeightSyncError(
                    f"weight sync (gloo): {server.url} did not join group {group_name} "
                    f"at {self.master_address}:{self.master_port} within "
                    f"{self.timeout_s:.0f}s: {exc}"
                ) from None
            future.result(timeout=self.timeout_s)
        finally:
            pool.shutdown(wait=False)

    def _init_nccl(self, server: _Server) -> None:
        # GPU only; vLLM's own NCCL engine, one group per server on consecutive ports.
        from vllm.distributed.weight_transfer.nccl_engine import (
            NCCLTrainerInitInfo,
            NCCLTrainerWeightTransferEngine,
        )

        init_info = NCCLTrainerInitInfo(
            master_address=self.master_address,
            master_port=self.master_port + self._index(server),
            world_size=1 + server.workers,
            rank=0,
        )
        server.client = HTTPWeightSyncClient(server.url, self.token, timeout_s=self.timeout_s)
        server.nccl_engine = NCCLTrainerWeightTransferEngine.trainer_init(
            init_info, client=server.client, source=_EmptySource()
        )

    # --- push ----------------------------------------------------------------------

    def push(self, model: torch.nn.Module | Mapping[str, torch.Tensor], version: int) -> float:
        """Send `model`'s parameters (or a full state dict) to every server as `version`.

        Names must be the Hugging Face checkpoint names (wrapper prefixes `module.` and
        `_orig_mod.` are stripped). Sharded DTensors are gathered with `full_tensor()`,
        a collective: with FSDP pass a full state dict gathered on all ranks instead.

        Returns the wall time in seconds (pause to verified resume). Raises
        `WeightSyncError` on any failure; servers may then stay paused with partially
        loaded weights, so treat it as fatal for the run (restart rollouts and re-init).
        """
        if not self._initialized:
            raise WeightSyncError("WeightSyncer.init() must succeed before push()")
        stats = SyncStats(version=version)
        start = time.perf_counter()
        self._pause_all()
        stats.pause_s = time.perf_counter() - start
        try:
            if self.backend == "gloo":
                t = time.perf_counter()
                named = (
                    model.named_parameters()
                    if isinstance(model, torch.nn.Module)
                    else model.items()
                )
                packed = pack_weights(
                    named,
                    max_bucket_bytes=self.max_bucket_bytes,
                    cast_dtype=self.cast_dtype,
                )
                stats.pack_s = time.perf_counter() - t
                stats.bytes = packed.nbytes
                t = time.perf_counter()
                self._each(lambda s: self._push_gloo(s, packed, str(version)))
                stats.transfer_s = time.perf_counter() - t
            else:
                t = time.perf_counter()
                for s in self.servers:
                    self._push_nccl(s, model, str(version))
                stats.transfer_s = time.perf_counter() - t
        except Exception:
            # The groups are in an unknown state; the next push must re-init.
            self._initialized = False
            raise
        t = time.perf_counter()
        self._each(lambda s: self._call(s, "POST", "/resume"))
        versions = self.weight_versions()
        stats.resume_verify_s = time.perf_counter() - t
        stale = {url: v for url, v in versions.items() if v != str(version)}
        if stale:
            raise WeightSyncError(
                f"weight sync: servers report versions {stale} after pushing {version}"
            )
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

    def _pause_all(self) -> None:
        """Pause every server; if one fails, resume the others (their weights are still
        untouched, so serving on is safe) and raise."""
        paused: list[_Server] = []

        def pause(server: _Server) -> None:
            self._call(server, "POST", "/pause", params={"mode": self.pause_mode})
            paused.append(server)

        try:
            self._each(pause, wait_all=True)
        except WeightSyncError:
            for server in paused:
                try:
                    self._call(server, "POST", "/resume")
                except WeightSyncError as exc:
                    logger.warning("could not resume %s after a failed pause: %s", server.url, exc)
            raise

    def _push_gloo(self, server: _Server, packed: PackedWeights, version: str) -> None:
        assert server.sender is not None
        self._call(server, "POST", "/start_weight_update")
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            future = pool.submit(
                self._call,
                server,
                "POST",
                "/update_weights",
                json={"update_info": packed.update_info()},
            )
            try:
                server.sender.send(packed)
            except Exception as exc:
                if future.done() and future.exception() is not None:
                    raise future.exception() from exc  # type: ignore[misc]
                raise WeightSyncError(
                    f"weight sync (gloo): broadcast to {server.url} failed: {exc}"
                ) from None
            future.result(timeout=self.timeout_s)
        finally:
            # Never join a thread whose peer may be dead; its own timeout ends it.
            pool.shutdown(wait=False)
        self._call(server, "POST", "/finish_weight_update", json={"weight_version": version})

    def _push_nccl(
        self,
        server: _Server,
        model: torch.nn.Module | Mapping[str, torch.Tensor],
        version: str,
    ) -> None:
        from vllm.distributed.weight_transfer.base import ModuleSource

        assert server.client is not None
        engine = server.nccl_engine
        engine.source = (
            ModuleSource(model) if isinstance(model, torch.nn.Module) else _DictSource(model)
        )
        server.client.pending_version = version
        try:
            engine.send_weights()  # start -> update + broadcast -> finish(version)
        finally:
            server.client.pending_version = None

    # --- queries / teardown ------------------------------------------------------------

    def weight_versions(self) -> dict[str, str]:
        """The weight version each server reports (`GET /weight_info`)."""
        answers = self._each(lambda s: self._call(s, "GET", "/weight_info"))
        return {
            s.url: str(a.get("weight_version")) for s, a in zip(self.servers, answers, strict=True)
        }

    def close(self) -> None:
        for s in self.servers:
            if s.sender is not None:
                s.sender.close()
                s.sender = None
            if s.nccl_engine is not None:
                s.nccl_engine.shutdown()
                s.nccl_engine = None
        self._initialized = False

    def __enter__(self) -> WeightSyncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DictSource:
    """vLLM `WeightSource` over a full state dict (names normalised like the gloo path)."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = {normalize_name(k): v for k, v in state.items()}

    def metadata(self) -> list[Any]:
        from vllm.distributed.weight_transfer.base import ParamMeta

        return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.state.items()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.state.items())


class _EmptySource:
    """Placeholder WeightSource until `push` sets the real model."""

    def metadata(self) -> list[Any]:
        return []

    def __iter__(self) -> Any:
        return iter(())


class HTTPWeightSyncClient:
    """vLLM's `VLLMWeightSyncClient` protocol over our authenticated, time-limited HTTP.

    vLLM's own `HTTPVLLMWeightSyncClient` sends no `Authorization` header, so it cannot
    talk to servers behind `TokenAuthMiddleware`; pass this one to
    `WeightTransferTrainerFactory.trainer_init(...)` instead.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        # Version for the next finish_weight_update: vLLM's NCCL trainer engine calls it
        # without arguments, so the syncer sets the version here first.
        self.pending_version: str | None = None

    def _post(self, path: str, json: Any = None) -> None:
        try:
            call(
                "POST",
                f"{self.url}{path}",
                token=self.token,
                timeout_s=self.timeout_s,
                json=json,
            )
        except HttpCallError as exc:
            raise WeightSyncError(f"weight sync: {exc}") from None

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._post("/init_weight_transfer_engine", {"init_info": init_info})

    def start_weight_update(self) -> None:
        self._post("/start_weight_update")

    def update_weights(self, update_info: Any) -> None:
        self._post("/update_weights", {"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = weight_version or self.pending_version
        self._post("/finish_weight_update", {"weight_version": version} if version else None)


__all__ = [
    "BACKENDS",
    "DEFAULT_SYNC_PORT",
    "HTTPWeightSyncClient",
    "SyncStats",
    "WeightSyncError",
    "WeightSyncer",
    "default_master_address",
]
