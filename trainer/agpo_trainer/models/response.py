"""A Hugging Face causal LM whose forward can return the response tokens' log-probs without
materialising the logits of every position.

Why a wrapper module: DDP and FSDP2 act through the *wrapped module's forward* (DDP's
gradient-bucket preparation, FSDP2's unshard / reshard hooks of the root's parameters: the
embeddings, the final norm and the lm_head). Calling the decoder body and then
``lm_head.weight`` from outside would use a still-sharded lm_head under FSDP2. So the chunked
computation *is* this module's forward, and this module is what the policy wraps.

The wrapper registers the causal LM's own children under their own names (``model``,
``lm_head``, ...), so its parameters, ``state_dict`` keys and FSDP full state dicts are
exactly the causal LM's (checkpoints, weight sync and the reference model are unchanged);
``.lm`` is the causal LM itself (for ``save_pretrained``, ``config``), not a child, so nothing
is registered twice. Called without ``response_tokens`` it is the causal LM's forward.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from agpo_trainer.algorithms import entropy_from_logits, linear_token_logprobs, token_logprobs

# Config fields of models whose logits are more than ``lm_head(hidden)``: those take the
# unchunked path (their own forward), so their log-probs stay right.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",  # Gemma 2/3
    "logit_scale",  # Cohere
    "logits_scaling",  # Granite
    "output_multiplier_scale",
)


class ResponseModel(nn.Module):
    """``forward(input_ids, attention_mask, response_positions=, response_tokens=, ...)``
    returns ``(logp [N], entropy [N] | None)`` for the ``N`` response tokens; any other call
    is the causal LM's own forward."""

    def __init__(self, lm: nn.Module, *, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        # Mixed precision without FSDP: float32 parameters, the forward under autocast to
        # this dtype (None: no autocast). Under FSDP2 its MixedPrecisionPolicy casts instead.
        self.autocast_dtype = autocast_dtype
        if next(lm.named_parameters(recurse=False), None) is not None:
            raise ValueError(f"{type(lm).__name__} holds parameters outside its submodules")
        for name, child in lm.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "lm", lm)  # not a child: its parameters are already ours
        self.lm: nn.Module
        prefix = getattr(lm, "base_model_prefix", "model")
        self.body_name = prefix if isinstance(getattr(lm, prefix, None), nn.Module) else "model"
        head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
        config = getattr(lm, "config", None)
        transformed = any(getattr(config, k, None) not in (None, 1.0) for k in _LOGIT_TRANSFORMS)
        # Not registered either: it is one of the children above (``lm_head``).
        plain = isinstance(head, nn.Linear) and not transformed
        object.__setattr__(self, "head", head if plain else None)
        self.head: nn.Linear | None

    def train(self, mode: bool = True) -> ResponseModel:
        super().train(mode)
        self.lm.training = mode  # the causal LM's own flag (its children are ours)
        return self

    def forward(
        self,
        *args: Any,
        response_positions: Tensor | None = None,
        response_tokens: Tensor | None = None,
        temperature: float = 1.0,
        chunk_tokens: int = 1024,
        with_entropy: bool = False,
        **kwargs: Any,
    ) -> Any:
        dtype = self.autocast_dtype
        device = next(self.parameters()).device.type
        ctx = contextlib.nullcontext() if dtype is None else torch.autocast(device, dtype=dtype)
        with ctx:
            return self._forward(*args, response_positions=response_positions,
                                 response_tokens=response_tokens, temperature=temperature,
                                 chunk_tokens=chunk_tokens, with_entropy=with_entropy,
                                 **kwargs)  # fmt: skip

    def _forward(
        self,
        *args: Any,
        response_positions: Tensor | None,
        response_tokens: Tensor | None,
        temperature: float,
        chunk_tokens: int,
        with_entropy: bool,
        **kwargs: Any,
    ) -> Any:
        if response_tokens is None:
            return self.lm(*args, **kwargs)
        assert response_positions is not None, "response_tokens need response_positions"
        if self.head is None:
            return self._unchunked(response_positions, response_tokens, temperature, with_entropy,
                                   *args, **kwargs)  # fmt: skip
        body = getattr(self, self.body_name)
        hidden = body(*args, use_cache=False, **kwargs).last_hidden_state  # [B, L, H]
        rows, cols = response_positions
        return linear_token_logprobs(
            hidden[rows, cols],
            self.head.weight,
            response_tokens,
            bias=self.head.bias,
            temperature=temperature,
            chunk=chunk_tokens,
            with_entropy=with_entropy,
        )

    def _unchunked(
        self,
        positions: Tensor,
        tokens: Tensor,
        temperature: float,
        with_entropy: bool,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor | None]:
        """The full-logits path, for models that transform their logits."""
        rows, cols = positions
        logits = self.lm(*args, use_cache=False, **kwargs).logits[rows, cols]
        logits = logits.float() / temperature
        logp = token_logprobs(logits.unsqueeze(0), tokens.unsqueeze(0)).squeeze(0)
        entropy = entropy_from_logits(logits.detach()) if with_entropy else None
        return logp, entropy


def as_response_model(model: nn.Module) -> nn.Module:
    """``model`` if it is (or DDP-wraps) a :class:`ResponseModel`, else one around it."""
    if isinstance(getattr(model, "module", model), ResponseModel):
        return model
    return ResponseModel(model)


def enable_gradient_checkpointing(lm: nn.Module) -> None:
    """Recompute each decoder layer's activations in backward (``trainer.gradientCheckpointing``).

    Non-reentrant checkpointing: it works with DDP and FSDP2 and with inputs that do not
    require grad (the reentrant kind would need ``enable_input_require_grads``)."""
    lm.gradient_checkpointing_enable(  # type: ignore[operator]
        gradient_checkpointing_kwargs={"use_reentrant": False}
    )  # the config's use_cache is left alone: checkpoints keep it for inference
