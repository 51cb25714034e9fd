"""`gloo` transport: this project's vLLM plugin (`agpo_rollout.engine`) on the other side.

CPU and GPU, over TCP, torch only (no vLLM in the trainer image). One `TCPStore` on the
trainer serves every server's group; the buckets are packed once per push and broadcast
to all groups concurrently. A push is one HTTP round trip per server (the plugin's
`POST /agpo/push_weights`, `agpo_rollout.routes`) while the buckets are broadcast. Wire
format and groups: `agpo_rollout.wire`, `agpo_rollout.gloo`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from agpo_rollout.gloo import GlooInitInfo, GlooSender, trainer_store
from agpo_rollout.wire import (
    DEFAULT_BUCKET_BYTES,
    PUSH_PATH,
    PackedWeights,
    Packer,
    push_request,
)
from agpo_trainer.rollout.weight_sync.transport import (
    PushAnswer,
    Server,
    ServerCalls,
    Weights,
    WeightSyncError,
    during_http,
)


class GlooTransport:
    """Trainer side (rank 0) of one gloo group per server."""

    parallel = True  # independent groups: servers are initialised and fed concurrently

    def __init__(
        self,
        calls: ServerCalls,
        *,
        master_address: str,
        master_port: int,
        timeout_s: float,
        max_bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        cast_dtype: torch.dtype | None = None,
    ) -> None:
        self.calls = calls
        self.master_address = master_address
        self.master_port = master_port
        self.timeout_s = timeout_s
        self.packer = Packer(max_bucket_bytes, cast_dtype)  # buffers reused every push
        self.store: Any = None
        self.senders: dict[str, GlooSender] = {}

    def listen(self) -> int:
        # A re-init (a server was replaced) keeps the store: its port is still bound, and
        # every init's fresh group names (nonce) keep the keys apart.
        if self.store is None:
            self.store = trainer_store(self.master_port, timeout_s=self.timeout_s)
        self.master_port = int(self.store.port)  # 0 -> the port actually bound
        return self.master_port

    def init(self, server: Server, group_name: str) -> None:
        world_size = 1 + server.workers
        info = GlooInitInfo(
            master_address=self.master_address,
            master_port=self.master_port,
            group_name=group_name,
            rank_offset=1,
            world_size=world_size,
            timeout_s=self.timeout_s,
        )

        def failure(exc: Exception) -> Exception:
            return WeightSyncError(
                f"weight sync (gloo): {server.url} did not join group {group_name} "
                f"at {self.master_address}:{self.master_port} within "
                f"{self.timeout_s:.0f}s: {exc}"
            )

        self.senders[server.url] = during_http(
            lambda: self.calls(
                server, "POST", "/init_weight_transfer_engine", json={"init_info": asdict(info)}
            ),
            lambda: GlooSender.open(self.store, group_name, world_size, self.timeout_s),
            timeout_s=self.timeout_s,
            failure=failure,
        )

    def prepare(self, weights: Weights) -> PackedWeights:
        named = (
            weights.named_parameters() if isinstance(weights, torch.nn.Module) else weights.items()
        )
        # Filled on a thread, bucket by bucket, while the first buckets are already on
        # the wire (every server's sender waits for each bucket it sends).
        return self.packer.pack(named, background=True)

    def push(self, server: Server, payload: Any, version: str, pause_mode: str) -> PushAnswer:
        packed: PackedWeights = payload
        sender = self.senders[server.url]
        body = push_request(packed, version, pause_mode)
        answers: list[Any] = []
        during_http(
            lambda: answers.append(self.calls(server, "POST", PUSH_PATH, json=body)),
            lambda: sender.send(packed),
            timeout_s=self.timeout_s,
            failure=lambda exc: WeightSyncError(
                f"weight sync (gloo): broadcast to {server.url} failed: {exc}"
            ),
        )
        answer = answers[0] or {}
        return PushAnswer(
            version=str(answer.get("weight_version")),
            phases={k: float(v) for k, v in (answer.get("phases") or {}).items()},
        )

    def drop(self, server: Server) -> None:
        # A sender thread still stuck in a broadcast to it ends on gloo's own timeout.
        sender = self.senders.pop(server.url, None)
        if sender is not None:
            sender.close()

    def close(self) -> None:
        for sender in self.senders.values():
            sender.close()
        self.senders.clear()


__all__ = ["GlooTransport"]
