"""Log-probs and entropy of chosen tokens: from logits (:func:`token_logprobs`,
:func:`entropy_from_logits`), and straight from hidden states, a chunk of positions at a
time, so the ``[N, V]`` logits of all positions never exist at once (pure torch).

``linear_token_logprobs(hidden[N, H], weight[V, H], bias, tokens[N])`` is
``log_softmax(hidden @ weight.T + bias) / temperature)[n, tokens[n]]`` (and the entropy of that
tempered distribution). Forward and backward each loop over chunks of ``chunk`` positions:

* forward keeps only ``logsumexp`` per position (``N`` floats) for backward;
* backward recomputes a chunk's logits and applies ``d logp / d z = onehot - softmax(z)``,
  so the peak is one chunk's ``[chunk, V]`` logits plus their gradient, whatever ``N`` is.

Peers do the same: Liger's fused linear cross-entropy and verl's ``FusedLinearForPPO`` chunk
the lm_head over positions; TRL's ``selective_log_softmax`` takes ``logit[id] - logsumexp``
per row. This one is plain torch (no Triton), so it also runs on CPU and is checked against
autograd in float64 (``tests/trainer/test_chunked_logprobs.py``).

Precision follows the unchunked path it replaces: the matmul in the activations' dtype (bf16
under mixed precision, the float32 master lm_head cast once per call), the softmax in float32 (float64 kept); the weight gradient is summed over chunks in
float32 and cast once (a bf16 sum over many chunks would round at every chunk).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from agpo_trainer.algorithms.advantages import compute_dtype


def token_logprobs(logits: Tensor, token_ids: Tensor) -> Tensor:
    """Log-probability of each chosen token: ``log_softmax(logits)[b, t, token_ids[b, t]]``.

    Computed as ``logit[id] - logsumexp(logits)`` so the full ``[B, T, V]`` log-softmax is never
    kept for backward (only ``logsumexp``'s own buffers), in float32 (float64 kept).

    Args:
        logits: ``Tensor[B, T, V]`` (any float dtype).
        token_ids: ``LongTensor[B, T]``.

    Returns:
        ``Tensor[B, T]`` in float32 (or float64): ratios need the precision bf16 lacks.
    """
    if logits.dim() != 3 or token_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, T, V] and token_ids [B, T], got {tuple(logits.shape)} "
            f"and {tuple(token_ids.shape)}"
        )
    logits = logits.to(compute_dtype(logits.dtype))
    chosen = logits.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical given by ``logits``: ``logsumexp(z) - sum softmax(z) * z``.

    Args:
        logits: ``Tensor[..., V]``.

    Returns:
        ``Tensor[...]`` in float32 (or float64).
    """
    logits = logits.to(compute_dtype(logits.dtype))
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def _chunk_logits(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float
) -> Tensor:
    """Tempered logits ``[c, V]`` of one chunk, in float32 (float64 kept). ``weight`` and
    ``bias`` are already in ``hidden``'s dtype (see :func:`_as_activation_dtype`)."""
    z = torch.nn.functional.linear(hidden, weight, bias).to(compute_dtype(hidden.dtype))
    return z.div_(temperature) if temperature != 1.0 else z


def _as_activation_dtype(
    hidden: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """The lm_head in the activations' dtype, cast once per call: with float32 master
    weights under autocast the hidden states are bf16 and the weight float32 (autocast casts
    in forward, but backward runs outside autocast)."""
    if weight.dtype == hidden.dtype:
        return weight, bias
    return weight.to(hidden.dtype), None if bias is None else bias.to(hidden.dtype)


def _spans(n: int, chunk: int) -> list[slice]:
    return [slice(s, min(s + chunk, n)) for s in range(0, n, chunk)]


class _LinearTokenLogprobs(torch.autograd.Function):  # type: ignore[misc, unused-ignore]
    """Autograd for :func:`linear_token_logprobs` (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        tokens: Tensor,
        temperature: float,
        chunk: int,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor]:
        n, dtype = hidden.shape[0], compute_dtype(hidden.dtype)
        w, b = _as_activation_dtype(hidden, weight, bias)
        logp = torch.empty(n, dtype=dtype, device=hidden.device)
        lse = torch.empty(n, dtype=dtype, device=hidden.device)
        entropy = torch.empty(n if with_entropy else 0, dtype=dtype, device=hidden.device)
        for s in _spans(n, chunk):
            z = _chunk_logits(hidden[s], w, b, temperature)
            lse[s] = torch.logsumexp(z, dim=-1)
            logp[s] = z.gather(-1, tokens[s].unsqueeze(-1)).squeeze(-1) - lse[s]
            if with_entropy:
                # H = lse - sum_v p_v z_v, the dot product row by row without a [c, V] product
                p = (z - lse[s].unsqueeze(-1)).exp_()  # one [c, V] temporary, not two
                entropy[s] = lse[s] - torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).view(-1)
        ctx.save_for_backward(hidden, weight, bias, tokens, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)  # a metric: no gradient is taken through it
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, grad_logp: Tensor, _grad_entropy: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, tokens, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = compute_dtype(weight.dtype)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        w, b = _as_activation_dtype(hidden, weight, bias)
        for s in _spans(hidden.shape[0], ctx.chunk):
            g = grad_logp[s].to(lse.dtype).unsqueeze(-1)
            # d logp_n / d z = onehot(token_n) - softmax(z), times 1/T for the tempering
            gz = _chunk_logits(hidden[s], w, b, ctx.temperature)
            gz.sub_(lse[s].unsqueeze(-1)).exp_().mul_(-g)
            gz.scatter_add_(-1, tokens[s].unsqueeze(-1), g)
            if ctx.temperature != 1.0:
                gz.div_(ctx.temperature)
            gz = gz.to(w.dtype)  # the matmuls in the activations' dtype, like the unchunked path
            if grad_h is not None:
                grad_h[s] = gz @ w
            if grad_w is not None:
                grad_w += (gz.t() @ hidden[s]).to(acc)
            if grad_b is not None:
                grad_b += gz.sum(dim=0).to(acc)
        return (
            grad_h,
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
            None,
            None,
        )


def linear_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    tokens: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of ``tokens`` under ``softmax((hidden @ weight.T + bias) / temperature)``,
    ``chunk`` positions at a time (see the module docstring).

    Args:
        hidden: ``Tensor[N, H]``, the final hidden states of the positions that predict
            ``tokens`` (gradient flows into it).
        weight: ``Tensor[V, H]`` the lm_head (gradient flows into it); ``bias`` ``[V]``.
        tokens: ``LongTensor[N]``.
        temperature: the sampling temperature the logits are divided by.
        chunk: positions per lm_head application (``trainer.logprobChunkTokens``).
        with_entropy: also return each position's entropy (no gradient).

    Returns:
        ``(logp Tensor[N], entropy Tensor[N] | None)`` in float32 (float64 kept).
    """
    if hidden.dim() != 2 or tokens.shape != hidden.shape[:1] or weight.dim() != 2:
        raise ValueError(
            f"expected hidden [N, H], weight [V, H] and tokens [N], got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)} and {tuple(tokens.shape)}"
        )
    if chunk < 1 or temperature <= 0:
        raise ValueError(f"need chunk >= 1 and temperature > 0, got {chunk}, {temperature}")
    args = (hidden, weight, bias, tokens.long(), float(temperature), int(chunk), with_entropy)
    logp, entropy = _LinearTokenLogprobs.apply(*args)  # type: ignore[no-untyped-call, unused-ignore]
    return logp, entropy if with_entropy else None
