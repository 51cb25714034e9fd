"""Policy losses, KL and entropy (verl ``core_algos`` style, split by topic).

Shapes: ``B`` sequences (completions) by ``T`` response tokens (right-padded), ``V`` vocabulary.
``response_mask[B, T]`` is 1/True on real response tokens. Computation runs in at least float32
(float64 is kept, so ``torch.autograd.gradcheck`` works); the returned loss is a float32 (or
float64) scalar whose gradient flows back into the caller's (e.g. bfloat16) log-probs.

Per-token loss of the default ``clipped`` (PPO, arXiv 1707.06347, with DAPO's decoupled
"clip-higher" ranges, arXiv 2503.14476)::

    rho_t  = exp(logp_t - old_logp_t)                     # vs the rollout policy
    loss_t = -min(rho_t * A, clip(rho_t, 1 - clip_low, 1 + clip_high) * A)
           + kl_coef * k3_t                                # optional, k3 KL to a reference
    k3_t   = exp(ref_t - logp_t) - (ref_t - logp_t) - 1    # (Schulman's k3; log-ratio +-20 as verl)

``gvpo`` (GVPO, arXiv 2504.19599) has no ratio and no clip: per group of ``k`` responses,
``w_i = A_i - beta * (D_i - mean_g D)`` with ``D_i = sum_t (logp_t - old_logp_t)`` and ``A_i``
the centred reward (``advantage: dr_grpo``), and the loss ``-beta * sum_i w_i * D_i / (k - 1)``
with ``w`` held constant; its gradient is that of the paper's
``1/2 sum_i [beta (D_i - mean D) - A_i]^2 / (k - 1)`` (see :func:`gvpo_loss`).

The aggregations (``token-mean``, ...) and their global denominators are in
:mod:`agpo_trainer.algorithms.aggregation`.

``sample_mask[B]`` (False = the completion's group is excluded, e.g. zero-variance groups under
``zeroVariance: mask|resample``) removes those rows from the numerator *and* the denominator.
If nothing is left the loss is an exact 0 that still has a graph (``backward()`` gives zero
gradients instead of NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from agpo_trainer.algorithms.advantages import compute_dtype
from agpo_trainer.algorithms.aggregation import get_loss_aggregation, masks
from agpo_trainer.algorithms.registry import Registry

_LOG_RATIO_CLAMP = 20.0  # verl clamps log-ratios to +-20 before exp() to avoid inf


# ----------------------------------------------------------------------------- log-probs


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


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 estimator of KL(pi || ref) per token: ``exp(d) - d - 1`` with ``d = ref - logp``.

    Unbiased and always >= 0 (J. Schulman, "Approximating KL divergence"; GRPO/DeepSeek-R1 use
    it). ``d`` is clamped to +-20 like verl so a far-off token cannot give ``inf``.
    Shapes: ``[B, T]`` in and out.
    """
    return _k3(ref_logprobs - logprobs)


def _k3(ref_minus_logp: Tensor) -> Tensor:
    """k3 from the log-ratio ``d = ref - logp`` (clamped to +-20): ``exp(d) - d - 1``."""
    d = ref_minus_logp.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1.0


# ----------------------------------------------------------------------------- policy losses


@dataclass(frozen=True)
class PolicyLossOutput:
    """What a policy loss function returns; every tensor is ``[B, T]``."""

    per_token_loss: Tensor
    ratio: Tensor
    clipped_low: Tensor  # Bool: the lower clip bound was the active term
    clipped_high: Tensor  # Bool: the upper clip bound was the active term
    extra: dict[str, Tensor] = field(default_factory=dict)  # scalar metrics of the loss


@dataclass(frozen=True)
class PolicyLossConfig:
    """The settings every policy loss receives (each uses what it needs)."""

    clip_low: float = 0.2
    clip_high: float = 0.28
    beta: float = 0.1  # GVPO's beta (spec algorithm.gvpoBeta)
    group_size: int | None = None  # G; GVPO needs whole contiguous groups


# fn(log_ratio[B,T], advantages[B,1], token_mask[B,T], config) -> PolicyLossOutput
PolicyLossFn = Callable[[Tensor, Tensor, Tensor, PolicyLossConfig], PolicyLossOutput]

POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: register ``fn(log_ratio, advantages, token_mask, config)`` (spec
    ``algorithm.policyLoss``).

    ``log_ratio = logp - old_logp`` (0 on padding) and ``token_mask`` (float, excluded samples
    zeroed) are ``[B, T]``, ``advantages`` ``[B, 1]``, ``config`` a :class:`PolicyLossConfig`;
    the function returns a :class:`PolicyLossOutput` whose ``per_token_loss`` the spec's
    aggregation reduces.
    """
    return POLICY_LOSSES.register(name)


def get_policy_loss(name: str) -> PolicyLossFn:
    """Return the policy loss registered as ``name`` (ValueError listing valid names)."""
    return POLICY_LOSSES.get(name)


def _clipped_surrogate(
    ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float
) -> PolicyLossOutput:
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    # -min(rho*A, clip(rho)*A) == max(-rho*A, -clip(rho)*A)
    loss = -torch.minimum(unclipped, clipped)
    # Clip "active" = the clipped branch won and cut the gradient (TRL's clip_ratio/low|high).
    clipped_low = (ratio < 1.0 - clip_low) & (advantages < 0)
    clipped_high = (ratio > 1.0 + clip_high) & (advantages > 0)
    return PolicyLossOutput(loss, ratio, clipped_low, clipped_high)


@register_policy_loss("clipped")
def clipped_loss(
    log_ratio: Tensor, advantages: Tensor, token_mask: Tensor, config: PolicyLossConfig
) -> PolicyLossOutput:
    """Token-level clipped surrogate (PPO, arXiv 1707.06347; DAPO clip-higher, 2503.14476).

    ``rho_t = exp(logp_t - old_logp_t)``, ``loss_t = -min(rho_t A, clip(rho_t, 1-low, 1+high) A)``.
    Shapes: ``[B, T]`` log-ratio and mask, ``[B, 1]`` advantages.
    """
    ratio = torch.exp(log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
    return _clipped_surrogate(ratio, advantages, config.clip_low, config.clip_high)


def gvpo_weights(
    log_ratio: Tensor, advantages: Tensor, token_mask: Tensor, beta: float, group_size: int
) -> tuple[Tensor, Tensor]:
    """GVPO's per-response weights and log-ratio sums (arXiv 2504.19599).

    ``D_i = sum_t m_it (logp_it - old_logp_it)`` and ``w_i = A_i - beta * (D_i - mean_g D)``,
    the mean over the ``G`` responses of ``i``'s group (rows ``[g*G:(g+1)*G]``).

    Args:
        log_ratio: ``Tensor[B, T]``; token_mask: ``Tensor[B, T]`` (float); advantages ``[B, 1]``
            (the centred rewards ``R_i - mean R`` for the paper's objective).
        beta: GVPO's beta; group_size: ``G`` (``B % G == 0``).

    Returns:
        ``(w Tensor[B], D Tensor[B])``; ``w`` is detached (a constant of the loss), ``D`` is not.
    """
    b = log_ratio.shape[0]
    if group_size < 2 or b % group_size != 0:
        raise ValueError(
            f"gvpo needs whole groups of size >= 2: {b} rows, group_size={group_size} (all "
            f"responses of a prompt must be in the same micro-batch)"
        )
    d = (log_ratio * token_mask).sum(dim=-1)
    dg = d.detach().view(-1, group_size)
    centred = (dg - dg.mean(dim=-1, keepdim=True)).reshape(-1)
    w = advantages.detach().reshape(-1) - beta * centred
    return w, d


@register_policy_loss("gvpo")
def gvpo_loss(
    log_ratio: Tensor, advantages: Tensor, token_mask: Tensor, config: PolicyLossConfig
) -> PolicyLossOutput:
    """GVPO (Group Variance Policy Optimization, arXiv 2504.19599): no ratio, no clip.

    Per group of ``k = G`` responses the paper minimises
    ``L_g = 1/2 sum_i [beta (D_i - mean D) - (R_i - mean R)]^2 / (k - 1)`` with
    ``D_i = sum_t log(pi_theta / pi_old)``. Its gradient is
    ``-beta sum_i w_i grad D_i / (k - 1)``, ``w_i = (R_i - mean R) - beta (D_i - mean D)``
    (the cross term with ``mean grad D`` vanishes because the bracket sums to 0 over a
    group), so the per-token loss is ``l_it = -beta * k / (k - 1) * w_i * log_ratio_it`` with
    ``w`` constant: summed over tokens and averaged over the batch's sequences
    (``lossAggregation: seq-mean-token-sum``) it is ``mean_g`` of the paper's gradient.
    ``A_i`` stands for ``R_i - mean R`` (``advantage: dr_grpo``). Rows of a group must be
    contiguous and together (``config.group_size``). ``extra["gvpo/mse"]`` is the paper's
    ``L_g`` averaged over the included groups (0 when rewards equal the implied rewards).
    """
    if config.group_size is None:
        raise ValueError("policy loss gvpo needs group_size (completions per prompt)")
    k = config.group_size
    w, _ = gvpo_weights(log_ratio, advantages, token_mask, config.beta, k)
    scale = -config.beta * k / (k - 1)
    per_token = scale * w.unsqueeze(-1) * log_ratio
    with torch.no_grad():
        kept = (token_mask.sum(dim=-1) > 0).view(-1, k).any(dim=-1)
        # (A_i - mean A) - beta (D_i - mean D): the paper's bracket (A = R - mean R already)
        residual = w.view(-1, k) - advantages.detach().view(-1, k).mean(dim=-1, keepdim=True)
        per_group = 0.5 * (residual**2).sum(dim=-1) / (k - 1)
        mse = (per_group * kept).sum() / kept.sum().clamp(min=1)
    ratio = torch.exp(log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)).detach()
    none = torch.zeros_like(log_ratio, dtype=torch.bool)
    return PolicyLossOutput(per_token, ratio, none, none, {"gvpo/mse": mse})


# ----------------------------------------------------------------------------- the loss


def _check_shapes(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    ref_logprobs: Tensor | None,
    sample_mask: Tensor | None,
    logits: Tensor | None,
) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got {tuple(logprobs.shape)}")
    b, t = logprobs.shape
    for name, x in (("old_logprobs", old_logprobs), ("response_mask", response_mask)):
        if x.shape != logprobs.shape:
            raise ValueError(f"{name} must be [B, T]={b, t}, got {tuple(x.shape)}")
    if ref_logprobs is not None and ref_logprobs.shape != logprobs.shape:
        raise ValueError(f"ref_logprobs must be [B, T]={b, t}, got {tuple(ref_logprobs.shape)}")
    if advantages.shape != (b,):
        raise ValueError(f"advantages must be [B]=({b},), got {tuple(advantages.shape)}")
    if sample_mask is not None and sample_mask.shape != (b,):
        raise ValueError(f"sample_mask must be Bool[B]=({b},), got {tuple(sample_mask.shape)}")
    if logits is not None and (logits.dim() != 3 or logits.shape[:2] != logprobs.shape):
        raise ValueError(f"logits must be [B, T, V] with B, T={b, t}, got {tuple(logits.shape)}")


def _masked_mean(x: Tensor, mask: Tensor, count: Tensor) -> Tensor:
    """Mean of ``x`` over the True entries of the bool ``mask`` (``count`` of them); 0 if none."""
    if x.dtype == torch.bool:
        total = (x & mask).sum()
    else:
        total = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()
    return total / count.clamp(min=1)


def _masked_extreme(x: Tensor, mask: Tensor, largest: bool) -> Tensor:
    """Max (or min) of ``x`` over the True entries of ``mask``; 0 if none."""
    fill = torch.tensor(-math.inf if largest else math.inf, dtype=x.dtype, device=x.device)
    value = torch.where(mask, x, fill)
    out = value.amax() if largest else value.amin()
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)


def _to_floats(values: dict[str, Tensor]) -> dict[str, float]:
    """Detached python floats with a single device sync (one ``tolist`` instead of one each)."""
    if not values:
        return {}
    stacked = torch.stack([v.detach().to(torch.float64).reshape(()) for v in values.values()])
    return dict(zip(values, stacked.tolist(), strict=True))


def compute_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    aggregation: str = "token-mean",
    sample_mask: Tensor | None = None,
    max_tokens: int | None = None,
    logits: Tensor | None = None,
    entropy: Tensor | None = None,
    loss_type: str = "clipped",
    gvpo_beta: float = 0.1,
    group_size: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Policy loss (clipped surrogate or GVPO) with optional k3 KL, masked groups, aggregation.

    Args:
        logprobs: ``Tensor[B, T]`` log-probs of the response tokens under the current policy
            (requires grad).
        old_logprobs: ``Tensor[B, T]`` log-probs from the rollout policy (no grad is taken).
        advantages: ``Tensor[B]``, one per sequence (from ``compute_advantages``; no grad).
        response_mask: ``[B, T]`` bool/0-1, True on response tokens.
        clip_low / clip_high: ``epsilon_low`` / ``epsilon_high`` (DAPO clip-higher 0.2 / 0.28;
            spec ``algorithm.clip.low|high``).
        ref_logprobs: ``Tensor[B, T]`` reference-policy log-probs for the KL term / metric.
        kl_coef: ``beta`` (spec ``algorithm.klCoefficient``); ``> 0`` requires ``ref_logprobs``.
        aggregation: ``token-mean`` | ``seq-mean-token-mean`` | ``seq-mean-token-sum-norm``.
        sample_mask: ``Bool[B]``; False rows (excluded groups) leave numerator and denominator.
        max_tokens: constant divisor of ``seq-mean-token-sum-norm`` (default ``T``).
        logits: ``Tensor[B, T, V]``, only for the entropy metric (no gradient through it).
        entropy: ``Tensor[B, T]``, the per-token entropies themselves (the chunked
            log-prob path computes them without ``[B, T, V]`` logits); instead of ``logits``.
        loss_type: registered policy loss, spec ``algorithm.policyLoss``: ``clipped`` |
            ``gvpo`` (which ignores the clip and needs ``group_size`` and whole groups).
        gvpo_beta: GVPO's ``beta`` (spec ``algorithm.gvpoBeta``).
        group_size: ``G``; rows ``[g*G:(g+1)*G]`` are one prompt's responses (GVPO).

    Returns:
        ``(loss, metrics)``: ``loss`` a scalar (float32/float64) with a graph to ``logprobs``;
        ``metrics`` python floats computed over the included response tokens:
        ``loss``, ``policy_loss``, ``kl`` (when ``ref_logprobs`` given), ``entropy`` (when
        ``logits`` or ``entropy`` given), ``clip_ratio/low_mean``, ``clip_ratio/high_mean``,
        ``clip_ratio/region_mean``, ``ratio/mean``, ``ratio/min``, ``ratio/max``,
        ``num_tokens``, ``frac_samples_masked``; ``gvpo/mse`` with ``gvpo``.
    """
    _check_shapes(
        logprobs, old_logprobs, advantages, response_mask, ref_logprobs, sample_mask, logits
    )
    if clip_low < 0 or clip_high < 0 or clip_low >= 1:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs (reference-policy log-probs)")
    if entropy is not None and (logits is not None or entropy.shape != logprobs.shape):
        raise ValueError(
            f"entropy must be [B, T]={tuple(logprobs.shape)} and not given with logits, got "
            f"{tuple(entropy.shape)}"
        )
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    loss_fn = get_policy_loss(loss_type)
    agg_fn = get_loss_aggregation(aggregation)

    dtype = compute_dtype(logprobs.dtype)
    logp = logprobs.to(dtype)
    old = old_logprobs.detach().to(dtype)
    adv = advantages.detach().to(dtype).unsqueeze(-1)
    token_mask, seq_mask = masks(response_mask, sample_mask, dtype)

    # Padding positions may hold -inf/NaN log-probs (-inf - -inf = NaN); zero the log-ratio
    # there before any arithmetic so 0 * NaN never reaches the masked sums or the gradient.
    # where() hands the replaced entries an exact zero gradient.
    valid = response_mask.bool()
    zero = torch.zeros((), dtype=dtype, device=logp.device)
    log_ratio = torch.where(valid, logp - old, zero)

    config = PolicyLossConfig(clip_low, clip_high, gvpo_beta, group_size)
    out = loss_fn(log_ratio, adv, token_mask, config)
    policy_loss = agg_fn(out.per_token_loss, token_mask, seq_mask, max_tokens)

    kl: Tensor | None = None
    kl_loss: Tensor | None = None
    if ref_logprobs is not None:
        kl = _k3(torch.where(valid, ref_logprobs.detach().to(dtype) - logp, zero))
    if kl is not None and kl_coef > 0:
        # Per-token KL in the loss (GRPO). Every aggregation is linear, so
        # agg(pg + beta * kl) == agg(pg) + beta * agg(kl).
        kl_loss = agg_fn(kl, token_mask, seq_mask, max_tokens)
        loss = policy_loss + kl_coef * kl_loss
    else:
        loss = policy_loss

    with torch.no_grad():
        counted = token_mask > 0
        count = counted.sum()
        values: dict[str, Tensor] = {
            "loss": loss,
            "policy_loss": policy_loss,
            "clip_ratio/low_mean": _masked_mean(out.clipped_low, counted, count),
            "clip_ratio/high_mean": _masked_mean(out.clipped_high, counted, count),
            "clip_ratio/region_mean": _masked_mean(
                out.clipped_low | out.clipped_high, counted, count
            ),
            "ratio/mean": _masked_mean(out.ratio, counted, count),
            "ratio/min": _masked_extreme(out.ratio, counted, largest=False),
            "ratio/max": _masked_extreme(out.ratio, counted, largest=True),
            "num_tokens": count,
            **out.extra,
        }
        if sample_mask is not None and sample_mask.numel() > 0:
            values["frac_samples_masked"] = (~sample_mask.bool()).float().mean()
        if kl is not None:
            values["kl"] = _masked_mean(kl, counted, count)
        if kl_loss is not None:
            values["kl_loss"] = kl_loss
        if logits is not None:
            entropy = entropy_from_logits(logits.detach())
        if entropy is not None:
            values["entropy"] = _masked_mean(entropy.detach(), counted, count)
        metrics = _to_floats(values)
    metrics.setdefault("frac_samples_masked", 0.0)
    return loss, metrics
