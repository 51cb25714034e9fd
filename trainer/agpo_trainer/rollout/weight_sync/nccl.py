"""`nccl` transport: vLLM's own `NCCLTrainerWeightTransferEngine`, one group per server.

GPU only, and the trainer image then needs `vllm`: it is imported when the transport is
used, never at import time. vLLM's NCCL rendezvous (`StatelessProcessGroup`) hosts a store
per group, so server *i* uses port `master_port + i`. vLLM's engine runs the HTTP calls
itself (through `HTTPWeightSyncClient`), including its own "update on a thread while
broadcasting" step. Not exercised here (no GPU); written against vllm 0.32's
`distributed/weight_transfer/nccl_engine.py`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from agpo_rollout.wire import normalize_name
from agpo_trainer.rollout.http import HttpCallError, call
from agpo_trainer.rollout.weight_sync.transport import (
    PushAnswer,
    Server,
    ServerCalls,
    Weights,
    WeightSyncError,
)


@dataclass
class _Session:
    engine: Any  # NCCLTrainerWeightTransferEngine
    client: HTTPWeightSyncClient


@dataclass(frozen=True)
class NcclPayload:
    """A vLLM `WeightSource`; vLLM's engine packs while it broadcasts."""

    source: Any
    nbytes: int = 0  # not known before vLLM's producer runs; SyncStats.bytes stays 0


class NcclTransport:
    """Trainer side (rank 0) of vLLM's NCCL backend."""

    # One server at a time: several NCCL communicators set up, or broadcasting on the
    # current CUDA stream, from concurrent threads of one process would be unsafe.
    parallel = False

    def __init__(
        self,
        calls: ServerCalls,
        *,
        token: str | None,
        master_address: str,
        master_port: int,
        timeout_s: float,
        cast_dtype: torch.dtype | None = None,
    ) -> None:
        self.calls = calls
        self.cast_dtype = cast_dtype  # float32 master weights -> the served dtype
        self.token = token
        self.master_address = master_address
        self.master_port = master_port
        self.timeout_s = timeout_s
        self.sessions: dict[str, _Session] = {}

    def listen(self) -> int:
        return self.master_port  # vLLM's engine hosts a store per group itself

    def init(self, server: Server, group_name: str) -> None:
        from vllm.distributed.weight_transfer.nccl_engine import (
            NCCLTrainerInitInfo,
            NCCLTrainerWeightTransferEngine,
        )

        init_info = NCCLTrainerInitInfo(
            master_address=self.master_address,
            master_port=self.master_port + server.index,
            world_size=1 + server.workers,
            rank=0,
        )
        client = HTTPWeightSyncClient(server.url, self.token, timeout_s=self.timeout_s)
        engine = NCCLTrainerWeightTransferEngine.trainer_init(
            init_info, client=client, source=_EmptySource()
        )
        self.sessions[server.url] = _Session(engine=engine, client=client)

    def prepare(self, weights: Weights) -> NcclPayload:
        from vllm.distributed.weight_transfer.base import ModuleSource

        if self.cast_dtype is not None:  # a cast copy (the servers serve model.dtype)
            named = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
            return NcclPayload(
                _DictSource({k: _cast(v, self.cast_dtype) for k, v in named.items()})
            )
        if isinstance(weights, torch.nn.Module):
            return NcclPayload(ModuleSource(weights))
        return NcclPayload(_DictSource(weights))

    def push(self, server: Server, payload: Any, version: str, pause_mode: str) -> PushAnswer:
        # vLLM's engine runs start -> update + broadcast -> finish itself (three calls), so
        # pause, resume and the version check are three more: six round trips, not one.
        session = self.sessions[server.url]
        phases: dict[str, float] = {}
        t = time.perf_counter()
        self.calls(server, "POST", "/pause", params={"mode": pause_mode})
        phases["pause"] = time.perf_counter() - t
        session.engine.source = payload.source
        # vLLM's engine calls finish_weight_update() without a version: hand it over here.
        session.client.pending_version = version
        t = time.perf_counter()
        try:
            session.engine.send_weights()
        finally:
            session.client.pending_version = None
        phases["update"] = time.perf_counter() - t
        t = time.perf_counter()
        self.calls(server, "POST", "/resume")
        phases["resume"] = time.perf_counter() - t
        served = (self.calls(server, "GET", "/weight_info") or {}).get("weight_version")
        return PushAnswer(version=str(served), phases=phases)

    def drop(self, server: Server) -> None:
        session = self.sessions.pop(server.url, None)
        if session is not None:
            session.engine.shutdown()

    def close(self) -> None:
        for session in self.sessions.values():
            session.engine.shutdown()
        self.sessions.clear()


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    t = t.detach()
    return t.to(dtype) if t.is_floating_point() else t


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
    """Placeholder WeightSource until `send` sets the real one (vLLM's `trainer_init`
    requires a source)."""

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
        # without arguments, so the transport sets the version here first.
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


__all__ = ["HTTPWeightSyncClient", "NcclPayload", "NcclTransport"]
