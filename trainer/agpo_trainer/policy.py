"""The policy of one rank: the model (DDP/FSDP-wrapped), its tokenizer, optimizer and LR
schedule; gathering full weights from shards; the frozen reference model of the KL term; and
the one function that gives the response tokens' log-probs (and entropies) of the policy or
the reference, over chunks of response positions.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from agpo_api.resolved import ResolvedSpec
from agpo_trainer.distributed import barrier, broadcast_object, is_distributed
from agpo_trainer.runtime import Runtime
from agpo_trainer.schedule import lr_lambda

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The trainer's parameters (AdamW's master copy) are float32 whatever ``model.dtype`` is:
#: ``model.dtype`` is the compute and serving dtype. An update of lr x ~1 is far below bf16's
#: spacing near a typical weight (1e-6 vs ~1e-4 at 0.02), so bf16 parameters would round most
#: updates away. verl does the same (float32 actor, FSDP casting to bf16 for compute).
MASTER_DTYPE = torch.float32


def compute_dtype_of(spec: ResolvedSpec) -> torch.dtype | None:
    """The mixed-precision compute dtype (``model.dtype``), or None when it is float32."""
    dtype = DTYPES[spec.model.dtype]
    return None if dtype == MASTER_DTYPE else dtype


# --------------------------------------------------------------------------- model inputs
def pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-padded ids and attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
    return ids.to(device), attn.to(device)


@dataclass(frozen=True)
class Responses:
    """Prompt + completion sequences as model inputs, and where their response tokens are."""

    input_ids: Tensor  # [B, L] right-padded prompt + completion
    attention_mask: Tensor  # [B, L]
    tokens: Tensor  # [B, T] the completion tokens (0 past each one's end)
    positions: Tensor  # [B, T] the logit position that predicts each completion token
    mask: Tensor  # Bool[B, T] True on real completion tokens

    @staticmethod
    def build(
        prompts: list[list[int]], completions: list[list[int]], pad_id: int, device: torch.device
    ) -> Responses:
        ids, attn = pad([p + c for p, c in zip(prompts, completions, strict=True)], pad_id, device)
        width = max(len(c) for c in completions)
        mask = torch.zeros(len(completions), width, dtype=torch.bool, device=device)
        tokens = torch.zeros(len(completions), width, dtype=torch.long, device=device)
        positions = torch.zeros(len(completions), width, dtype=torch.long, device=device)
        for r, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            n = len(c)
            mask[r, :n] = True
            tokens[r, :n] = torch.tensor(c)
            # logits at position p predict token p + 1
            positions[r, :n] = torch.arange(len(p) - 1, len(p) - 1 + n)
            positions[r, n:] = len(p) - 1
        return Responses(ids, attn, tokens, positions, mask)


def response_logprobs(
    model: nn.Module,
    x: Responses,
    temperature: float,
    *,
    chunk_tokens: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs ``[B, T]`` of the completion tokens under ``model`` (policy or reference), and
    their entropies ``[B, T]`` when ``with_entropy`` (0 on padding in both).

    Only the response positions go through the lm_head, ``chunk_tokens`` at a time
    (:class:`agpo_trainer.models.response.ResponseModel`): memory grows with the chunk, not
    with tokens x vocabulary. The logits are divided by the sampling temperature because
    vLLM's processed log-probs (the rollout policy's, in the importance ratio) are taken after
    it too.
    """
    from agpo_trainer.models.response import as_response_model

    rows, cols = x.mask.nonzero(as_tuple=True)
    where = torch.stack([rows, x.positions[rows, cols]])  # [2, N]: (row, logit position)
    logp, entropy = as_response_model(model)(
        input_ids=x.input_ids,
        attention_mask=x.attention_mask,
        response_positions=where,
        response_tokens=x.tokens[rows, cols],
        temperature=temperature,
        chunk_tokens=chunk_tokens,
        with_entropy=with_entropy,
    )
    return _scatter(logp, x.mask), None if entropy is None else _scatter(entropy, x.mask)


def _scatter(values: Tensor, mask: Tensor) -> Tensor:
    """``values[N]`` back into ``[B, T]`` at the True entries of ``mask`` (0 elsewhere)."""
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(mask, values)


# --------------------------------------------------------------------------- the policy
class Policy:
    """The model being trained on this rank, with what updates it."""

    def __init__(
        self,
        spec: ResolvedSpec,
        rt: Runtime,
        *,
        model_dir: str,
        tokenizer: Any,
        model: nn.Module,
        device: torch.device,
    ) -> None:
        self.spec, self.rt, self.model_dir, self.tokenizer = spec, rt, model_dir, tokenizer
        self.device = device
        self.lm = model  # the causal LM (``module``); ``model`` is what trains, wrapped
        if spec.trainer.gradient_checkpointing:
            from agpo_trainer.models.response import enable_gradient_checkpointing

            enable_gradient_checkpointing(model)
        self.model = self._wrap(model)
        t = spec.training
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(spec))
        self.ref_model: nn.Module | None = None  # only when the KL term is on

    @staticmethod
    def load(spec: ResolvedSpec, rt: Runtime) -> Policy:
        """Load the model and tokenizer every rank trains (a builtin model or a GGUF file is
        made into the model cache first, by one rank per node)."""
        from transformers import AutoModelForCausalLM

        from agpo_trainer.models.location import check_model, load_tokenizer, model_location

        # One maker per node: each node has its own cache, and a GGUF conversion takes ~20 s
        # and a few GB that every rank of the node would otherwise spend at once.
        if rt.local_rank == 0:
            model_location(spec.model, rt.cache_dir)
        barrier()
        # In pods the operator says where it mounted the weights (AGPO_MODEL_PATH).
        model_dir = rt.model_path or model_location(spec.model, rt.cache_dir)
        check_model(spec.model, model_dir)  # a missing model is one line, not a traceback
        tokenizer = load_tokenizer(spec.model, model_dir)
        device = torch.device(f"cuda:{rt.local_rank}" if torch.cuda.is_available() else "cpu")
        kwargs = {"revision": spec.model.revision} if spec.model.revision else {}
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=MASTER_DTYPE, **kwargs).to(
            device
        )
        return Policy(
            spec, rt, model_dir=model_dir, tokenizer=tokenizer, model=model, device=device
        )

    def _wrap(self, lm: nn.Module) -> nn.Module:
        """The :class:`ResponseModel` around ``lm``, DDP- or FSDP2-wrapped across ranks: the
        wrapper's forward computes the log-probs, so the lm_head is used inside the forward
        DDP and FSDP hook (under FSDP2 the wrapper is the root that unshards the lm_head)."""
        from agpo_trainer.models.response import ResponseModel

        compute = compute_dtype_of(self.spec)
        if self.sharded:
            # FSDP2 casts the float32 shards to the compute dtype when it gathers them and
            # reduces gradients in float32: the optimizer steps the float32 shards.
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mp = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=MASTER_DTYPE)
            model = ResponseModel(lm)
            for layer in getattr(getattr(lm, "model", lm), "layers", []):
                fully_shard(layer, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
            return model
        model = ResponseModel(lm, autocast_dtype=compute)  # autocast over float32 parameters
        if self.rt.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.rt.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    @property
    def module(self) -> nn.Module:
        """The causal LM itself (``save_pretrained``, ``config``); its parameters are those of
        ``model`` (under FSDP2 they are the sharded ones)."""
        return self.lm

    @property
    def sharded(self) -> bool:
        return self.spec.trainer.strategy == "fsdp" and self.rt.world_size > 1

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    @contextlib.contextmanager
    def no_sync(self, skip: bool) -> Iterator[None]:
        """DDP without its gradient all-reduce when ``skip`` (every micro-batch but the
        last accumulates locally; the last one reduces the sum)."""
        ctx = self.model.no_sync() if skip and hasattr(self.model, "no_sync") else None
        with ctx or contextlib.nullcontext():
            yield

    # ----------------------------------------------------------------- full state
    def gather_weights(self) -> dict[str, Tensor] | None:
        """Full weights of a sharded (FSDP) model, a collective every rank must join; None
        when the local module already holds them all (single process, DDP)."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # NCCL weight sync broadcasts from GPU memory; gloo and checkpoints take CPU tensors.
        on_gpu = self.device.type == "cuda" and self.spec.rollout.weight_sync.backend == "nccl"
        opts = StateDictOptions(full_state_dict=True, cpu_offload=not on_gpu)
        return get_model_state_dict(self.model, options=opts)

    def optimizer_state(self) -> dict[str, Any]:
        """The full optimizer state (gathered on rank 0 under FSDP; a collective then)."""
        if not self.sharded:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.model, self.optimizer, options=opts)

    def load_full_state(self, weights: dict[str, Tensor], optimizer: dict[str, Any]) -> None:
        """Load full (unsharded) weights and optimizer state, sharding them under FSDP."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(self.model, weights, options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, optimizer, options=opts)
            return
        missing, _ = self.module.load_state_dict(weights, strict=False)
        if any(not k.endswith("lm_head.weight") for k in missing):  # tied embeddings are fine
            raise RuntimeError(f"checkpoint lacks weights: {missing[:3]}")
        self.optimizer.load_state_dict(optimizer)

    # ----------------------------------------------------------------- reference model
    def load_reference(self, path: Path, resumed: bool) -> None:
        """Freeze the initial RL policy (the current weights, after any format warm-up) as the
        KL term's reference, on every rank.

        Rank 0 saves it once at ``path`` next to its checkpoints, so a resumed run keeps the
        same reference instead of freezing its resumed weights, and broadcasts it: ranks on
        other nodes need not see rank 0's checkpoint directory.
        """
        from transformers import AutoModelForCausalLM

        weights = self.gather_weights()  # a collective under FSDP: every rank joins
        state = None
        if self.rt.is_main:
            state = self._reference_on_main(path, resumed, weights)
        state = broadcast_state_dict(state, self.rt.rank)
        ref = AutoModelForCausalLM.from_config(
            self.module.config,  # type: ignore[arg-type]
            dtype=DTYPES[self.spec.model.dtype],
        )
        missing, unexpected = ref.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
            raise RuntimeError(f"reference weights do not fit the model: {missing[:3]}")
        if getattr(ref.config, "tie_word_embeddings", False):
            ref.tie_weights()
        from agpo_trainer.models.response import ResponseModel

        self.ref_model = ResponseModel(ref.to(self.device)).eval().requires_grad_(False)

    def _reference_on_main(
        self, path: Path, resumed: bool, weights: dict[str, Tensor] | None
    ) -> dict[str, Tensor]:
        """Rank 0: the saved reference when resuming, else the current weights, saved."""
        from safetensors.torch import load_file

        if resumed and (path / "config.json").is_file():
            state: dict[str, Tensor] = {}
            for f in sorted(path.glob("*.safetensors")):
                state.update(load_file(str(f)))
            return state
        tmp = path.with_name(".tmp-reference")
        shutil.rmtree(tmp, ignore_errors=True)
        self.module.save_pretrained(tmp, safe_serialization=True, state_dict=weights)  # type: ignore[operator]
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        full = weights if weights is not None else self.module.state_dict()
        return {k: v.detach().cpu() for k, v in full.items()}


def broadcast_state_dict(state: dict[str, Tensor] | None, rank: int) -> dict[str, Tensor]:
    """Rank 0's ``state`` on every rank (the others pass None): the names, shapes and dtypes
    as one object, then one tensor broadcast each (on the GPU under NCCL)."""
    import torch.distributed as dist

    if not is_distributed():
        assert state is not None, "a single process must pass the state itself"
        return state
    layout = [(k, tuple(v.shape), v.dtype) for k, v in state.items()] if state else None
    layout = broadcast_object(layout, rank)
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    out: dict[str, Tensor] = {}
    for name, shape, dtype in layout:
        if state is not None:
            t = state[name].to(device).contiguous()
        else:
            t = torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(t, src=0)
        out[name] = t.cpu()
    return out
