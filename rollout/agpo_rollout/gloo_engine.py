"""The `gloo` weight-transfer backend for vLLM: CPU-capable, over the network.

vLLM's built-in backends (`nccl`, `ipc`, ...) need CUDA. This one moves the same
checkpoint-format weights over a gloo process group (TCP), so the native RL endpoints
(`/init_weight_transfer_engine`, `/start_weight_update`, `/update_weights`,
`/finish_weight_update`) work on CPU servers too. Modelled on vLLM's
`nccl_engine.NCCLWeightTransferEngine`; wire format in `gloo_common`.

Loaded lazily by `WeightTransferEngineFactory` (registered in `agpo_rollout`),
so vLLM processes that do not use it never import it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

import torch
from vllm.distributed.weight_transfer.base import (
    ModuleSource,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    VLLMWeightSyncClient,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.logger import init_logger

from agpo_rollout.gloo_common import (
    DEFAULT_BUCKET_BYTES,
    DEFAULT_TIMEOUT_S,
    Bucket,
    GlooSender,
    PackedWeights,
    broadcast_buffer,
    join_gloo_group,
    pack_weights,
    trainer_store,
    unpack_bucket,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.config.weight_transfer import WeightTransferConfig

logger = init_logger(__name__)

BACKEND = "gloo"


@dataclass(kw_only=True)
class GlooWeightTransferInitInfo(WeightTransferInitInfo):
    """Worker-side init info: where the trainer's store is and which group to join."""

    master_address: str
    master_port: int
    group_name: str
    rank_offset: int = 1
    world_size: int
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass
class GlooWeightTransferUpdateInfo(WeightTransferUpdateInfo):
    """Per-round update info: the buckets the trainer is about to broadcast, in order."""

    buckets: list[dict[str, Any]] = field(default_factory=list)
    parsed: list[Bucket] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Validate the whole plan before the first byte arrives: a bad entry must fail
        # the HTTP call, not leave the trainer blocked in a broadcast nobody receives.
        self.parsed = [Bucket.from_json(b) for b in self.buckets]


class GlooWeightTransferEngine(
    WeightTransferEngine[GlooWeightTransferInitInfo, GlooWeightTransferUpdateInfo]
):
    """Receives weights broadcast by the trainer over gloo and loads them layer by layer."""

    init_info_cls = GlooWeightTransferInitInfo
    update_info_cls = GlooWeightTransferUpdateInfo

    def __init__(
        self,
        config: WeightTransferConfig,
        vllm_config: VllmConfig,
        device: torch.device,
        model: torch.nn.Module,
    ) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: torch.distributed.ProcessGroupGloo | None = None
        self.timeout_s = DEFAULT_TIMEOUT_S

    def init_transfer_engine(self, init_info: GlooWeightTransferInitInfo) -> None:
        # Unique rank across data-parallel replicas of this server, as vLLM's nccl engine.
        pc = self.parallel_config
        worker_rank = pc.data_parallel_index * pc.world_size + pc.rank
        rank = init_info.rank_offset + worker_rank
        if not 0 < rank < init_info.world_size:
            raise ValueError(
                f"worker rank {rank} outside 1..{init_info.world_size - 1}: the trainer's "
                "world_size must count every worker of this server (GET /get_world_size)"
            )
        self.shutdown()  # a re-init (trainer restarted) replaces the old group
        self.timeout_s = init_info.timeout_s
        logger.info(
            "gloo weight transfer: joining %s:%d group %s as rank %d/%d",
            init_info.master_address,
            init_info.master_port,
            init_info.group_name,
            rank,
            init_info.world_size,
        )
        self.group = join_gloo_group(
            init_info.master_address,
            init_info.master_port,
            init_info.group_name,
            rank,
            init_info.world_size,
            init_info.timeout_s,
        )

    def start_weight_update(self) -> None:
        # Checkpoint-format weights: without layerwise reload, `load_weights` hits the
        # post-processed parameters and fails ("... into parameter (torch.Size([0]))").
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class ends with torch.accelerator.synchronize(), which raises on a
        # CPU-only host ("Cannot access accelerator device when none is available").
        self.receive_weights(self.parse_update_info(update_info))
        if self.device.type != "cpu" and torch.accelerator.is_available():
            torch.accelerator.synchronize()

    def receive_weights(self, update_info: GlooWeightTransferUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError(
                "gloo weight transfer not initialized: POST /init_weight_transfer_engine first"
            )
        from vllm.model_executor.model_loader.mtp_validation import (
            disable_mtp_completeness_check,
        )

        with disable_mtp_completeness_check():
            for bucket in update_info.parsed:
                buffer = torch.empty(bucket.nbytes, dtype=torch.uint8)
                broadcast_buffer(self.group, buffer, timeout_s=self.timeout_s)
                weights = [(name, t.to(self.device)) for name, t in unpack_bucket(buffer, bucket)]
                cast(Any, self.model).load_weights(weights)
                del weights, buffer

    def shutdown(self) -> None:
        self.group = None


# --- trainer side, for users of vLLM's WeightTransferTrainerFactory --------------------


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """Trainer-side init info for `WeightTransferTrainerFactory.trainer_init`.

    `world_size` is 1 + the number of workers of the one server `client` talks to
    (one group per server). `master_address` is how the server's workers reach this
    process; the store listens on all interfaces on `master_port` (0: pick a free one).
    """

    backend: ClassVar[str] = BACKEND

    master_address: str
    master_port: int
    world_size: int
    group_name: str = "default"
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_bucket_bytes: int = DEFAULT_BUCKET_BYTES


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Adapter of `GlooSender` to vLLM's trainer-side engine API (single server).

    `agpo_trainer.rollout.weight_sync.WeightSyncer` drives many servers with
    `GlooSender` directly; this class exists so code written against vLLM's factory
    (`trainer_init(...)` then `send_weights()`) can pick `gloo` like `nccl`.
    """

    init_info_cls = GlooTrainerInitInfo

    def __init__(
        self,
        *,
        client: VLLMWeightSyncClient,
        source: WeightSource | None = None,
        is_sender: bool = True,
        max_bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.sender: GlooSender | None = None
        self.max_bucket_bytes = max_bucket_bytes

    @classmethod
    def trainer_init(
        cls,
        init_info: GlooTrainerInitInfo,
        *,
        client: VLLMWeightSyncClient,
        source: WeightSource | None = None,
    ) -> Self:
        engine = cls(
            client=client,
            source=source,
            is_sender=init_info.is_sender,
            max_bucket_bytes=init_info.max_bucket_bytes,
        )
        if not engine.is_sender:
            return engine
        store = trainer_store(init_info.master_port, timeout_s=init_info.timeout_s)
        worker_info = {
            "master_address": init_info.master_address,
            "master_port": store.port,
            "group_name": init_info.group_name,
            "rank_offset": 1,
            "world_size": init_info.world_size,
            "timeout_s": init_info.timeout_s,
        }
        # The server's HTTP call returns only once its workers joined the group, which
        # needs us in it too: issue it from a thread while we join as rank 0.
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(client.init_weight_transfer_engine, worker_info)
            engine.sender = GlooSender.open(
                store, init_info.group_name, init_info.world_size, init_info.timeout_s
            )
            future.result()
        return engine

    def send_weights(self, weight_version: str | None = None) -> None:
        if self.source is None:
            raise ValueError("gloo trainer engine needs a WeightSource (e.g. ModuleSource)")
        packed = pack_weights(iter(self.source), max_bucket_bytes=self.max_bucket_bytes)
        if self.is_sender:
            self.send_packed(packed, weight_version)

    def send_packed(self, packed: PackedWeights, weight_version: str | None = None) -> None:
        assert self.sender is not None, "trainer_init() must run before send_packed()"
        self.client.start_weight_update()
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            future = pool.submit(self.client.update_weights, packed.update_info())
            self.sender.send(packed)
            future.result()
        finally:
            # Never join a thread whose peer may be gone; the timeout ends it.
            pool.shutdown(wait=False)
        self.client.finish_weight_update(weight_version)

    def shutdown(self) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None


__all__ = [
    "BACKEND",
    "GlooTrainerInitInfo",
    "GlooTrainerWeightTransferEngine",
    "GlooWeightTransferEngine",
    "GlooWeightTransferInitInfo",
    "GlooWeightTransferUpdateInfo",
    "ModuleSource",
]
