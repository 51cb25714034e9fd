"""The `gloo` weight-transfer backend for vLLM: CPU-capable, over the network.

vLLM's built-in backends (`nccl`, `ipc`, ...) need CUDA. This one moves the same
checkpoint-format weights over a gloo process group (TCP), so the native RL endpoints
(`/init_weight_transfer_engine`, `/start_weight_update`, `/update_weights`,
`/finish_weight_update`) work on CPU servers too. Modelled on vLLM's
`nccl_engine.NCCLWeightTransferEngine`; the wire format is `agpo_rollout.wire`, the groups
`agpo_rollout.gloo`. The trainer side is `agpo_trainer.rollout.weight_sync` (`GlooTransport`).

Loaded lazily by `WeightTransferEngineFactory` (registered in `agpo_rollout`),
so vLLM processes that do not use it never import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.logger import init_logger

from agpo_rollout.gloo import (
    DEFAULT_TIMEOUT_S,
    GlooInitInfo,
    join_gloo_group,
    start_broadcast,
    wait_work,
)
from agpo_rollout.wire import Bucket, parse_buckets, unpack_bucket

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.config.weight_transfer import WeightTransferConfig

logger = init_logger(__name__)

BACKEND = "gloo"


@dataclass(kw_only=True)
class GlooWeightTransferInitInfo(GlooInitInfo, WeightTransferInitInfo):
    """Worker-side init info: where the trainer's store is and which group to join (the
    fields of the shared `GlooInitInfo`; vLLM's parser needs its base class too)."""


@dataclass
class GlooWeightTransferUpdateInfo(WeightTransferUpdateInfo):
    """Per-round update info: the buckets the trainer is about to broadcast, in order."""

    buckets: list[dict[str, Any]] = field(default_factory=list)
    parsed: list[Bucket] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Validate the whole plan before the first byte arrives: a bad entry must fail
        # the HTTP call, not leave the trainer blocked in a broadcast nobody receives.
        self.parsed = parse_buckets(self.buckets)


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
        reprocess_tied_layers(self.model)

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
            # Bucket k+1 arrives (on gloo's thread) while bucket k is loaded here. Every
            # bucket gets a fresh buffer: with layerwise reload, `load_weights` may keep
            # views of it until the layer's last weight arrived (finish_weight_update), so
            # a buffer reused within a push would overwrite weights not yet copied in
            # (tests/rollout/test_served_weights.py caught exactly that).
            loaded: tuple[Bucket, torch.Tensor] | None = None
            for bucket in update_info.parsed:
                buffer = torch.empty(bucket.nbytes, dtype=torch.uint8)
                work = start_broadcast(self.group, buffer)
                if loaded is not None:
                    self._load(*loaded)
                wait_work(work, timeout_s=self.timeout_s)
                loaded = (bucket, buffer)
            if loaded is not None:
                self._load(*loaded)

    def _load(self, bucket: Bucket, buffer: torch.Tensor) -> None:
        weights = [(name, t.to(self.device)) for name, t in unpack_bucket(buffer, bucket)]
        cast(Any, self.model).load_weights(weights)

    def shutdown(self) -> None:
        self.group = None


def reprocess_tied_layers(model: torch.nn.Module) -> None:
    """Process again every layer whose weight is another layer's (tied word embeddings).

    On CPU, vLLM gives each layer a prepacked copy of its weight (oneDNN or SGL kernels,
    `dispatch_cpu_unquantized_gemm`) and computes with the copy. A tied `lm_head` shares
    `embed_tokens.weight` but receives no checkpoint tensor of its own, so layerwise reload
    processes only the embedding ("ParallelLMHead: Failed to load weights" in vLLM's log)
    and the logits kept coming from the initial head, whatever was pushed. Repacking every
    sharer from the shared, now updated, tensor fixes it; on GPU the embedding's processing
    is a no-op. tests/e2e/test_smollm2.py compares served log-probs with transformers."""
    sharers: dict[int, list[torch.nn.Module]] = {}
    for layer in model.modules():
        weight = layer._parameters.get("weight")
        if weight is not None and hasattr(layer, "quant_method"):
            sharers.setdefault(id(weight), []).append(layer)
    for layers in sharers.values():
        if len(layers) > 1:
            for layer in layers:
                layer.quant_method.process_weights_after_loading(layer)


__all__ = [
    "BACKEND",
    "GlooWeightTransferEngine",
    "GlooWeightTransferInitInfo",
    "GlooWeightTransferUpdateInfo",
    "reprocess_tied_layers",
]
