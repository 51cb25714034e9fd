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

``gvpo`` (GVPO, arXiv 2504.19599: no ratio, no clip) is registered in
:mod:`agpo_trainer.algorithms.gvpo`, the example of a policy loss in a file of its own.

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

from agpo_api.catalog import POLICY_LOSSES as CATALOG
from agpo_api.catalog import PolicyLossTraits
from agpo_api.models import DEFAULT_GVPO_BETA, DEFAULT_PRESET, PRESETS, RolloutCorrectionSpec
from agpo_api.resolved import ResolvedAlgorithm
from agpo_trainer.algorithms.advantages import compute_dtype
from agpo_trainer.algorithms.aggregation import get_loss_aggregation, masks
from agpo_trainer.algorithms.correction import correction_weights, rollout_trainer_k3
from agpo_trainer.algorithms.logprobs import entropy_from_logits
from agpo_trainer.registry import Registry

LOG_RATIO_CLAMP = 20.0  # verl clamps log-ratios to +-20 before exp() to avoid inf


def k3(ref_minus_logp: Tensor) -> Tensor:
    """k3 estimator of KL(pi || ref) per token from the log-ratio ``d = ref - logp``:
    ``exp(d) - d - 1`` (J. Schulman, "Approximating KL divergence"; GRPO/DeepSeek-R1 use it).
    Unbiased and always >= 0; ``d`` is clamped to +-20 like verl so a far-off token cannot give
    ``inf``. Shapes: ``[B, T]`` in and out."""
    d = ref_minus_logp.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
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
    """The settings every policy loss receives (each uses what it needs), built from the
    resolved ``spec.algorithm`` in one place (:meth:`of`)."""

    # the default preset's range (a caller of the pure function that gives none)
    clip_low: float = PRESETS[DEFAULT_PRESET]["clip"]["low"]
    clip_high: float = PRESETS[DEFAULT_PRESET]["clip"]["high"]
    beta: float = DEFAULT_GVPO_BETA  # GVPO's beta (spec algorithm.gvpoBeta)
    group_size: int | None = None  # G; GVPO needs whole contiguous groups

    @staticmethod
    def of(algo: ResolvedAlgorithm) -> PolicyLossConfig:
        """The config of a resolved ``spec.algorithm``."""
        return PolicyLossConfig(algo.clip_low, algo.clip_high, algo.gvpo_beta, algo.group_size)


# fn(log_ratio[B,T], advantages[B,1], token_mask[B,T], config) -> PolicyLossOutput
PolicyLossFn = Callable[[Tensor, Tensor, Tensor, PolicyLossConfig], PolicyLossOutput]

POLICY_LOSSES: Registry[PolicyLossFn, PolicyLossTraits] = Registry("policy loss", CATALOG)


def register_policy_loss(
    name: str, *, traits: PolicyLossTraits | None = None
) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: register ``fn(log_ratio, advantages, token_mask, config)`` (spec
    ``algorithm.policyLoss``).

    ``log_ratio = logp - old_logp`` (0 on padding) and ``token_mask`` (float, excluded samples
    zeroed) are ``[B, T]``, ``advantages`` ``[B, 1]``, ``config`` a :class:`PolicyLossConfig`;
    the function returns a :class:`PolicyLossOutput` whose ``per_token_loss`` the spec's
    aggregation reduces. A new name gives its ``traits`` (whole groups, its own aggregation).
    """
    return POLICY_LOSSES.register(name, traits=traits)


def get_policy_loss(name: str) -> PolicyLossFn:
    """Return the policy loss registered as ``name`` (ValueError listing valid names)."""
    return POLICY_LOSSES.get(name)


def clipped_surrogate(
    ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float
) -> PolicyLossOutput:
    """PPO's clipped surrogate of ``ratio`` ``[B, T]`` (shared by ``clipped`` and ``gspo``)."""
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
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    return clipped_surrogate(ratio, advantages, config.clip_low, config.clip_high)


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
    """Max (or min) of ``x`` over the True entries of ``mask``; ``-inf`` (``inf``) if none:
    the neutral value of a max (min) over micro-batches and ranks."""
    fill = torch.tensor(-math.inf if largest else math.inf, dtype=x.dtype, device=x.device)
    value = torch.where(mask, x, fill)
    return value.amax() if largest else value.amin()


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
    config: PolicyLossConfig = PolicyLossConfig(),
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    aggregation: str = "token-mean",
    sample_mask: Tensor | None = None,
    max_tokens: int | None = None,
    logits: Tensor | None = None,
    entropy: Tensor | None = None,
    loss_type: str = "clipped",
    rollout_logprobs: Tensor | None = None,
    correction: RolloutCorrectionSpec | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Policy loss (clipped surrogate or GVPO) with optional k3 KL, masked groups, aggregation.

    Args:
        logprobs: ``Tensor[B, T]`` log-probs of the response tokens under the current policy
            (requires grad).
        old_logprobs: ``Tensor[B, T]`` log-probs from the rollout policy (no grad is taken).
        advantages: ``Tensor[B]``, one per sequence (from ``compute_advantages``; no grad).
        response_mask: ``[B, T]`` bool/0-1, True on response tokens.
        config: :class:`PolicyLossConfig` (``PolicyLossConfig.of(resolved algorithm)``): the
            clip range ``epsilon_low`` / ``epsilon_high``, GVPO's ``beta`` and ``G``.
        ref_logprobs: ``Tensor[B, T]`` reference-policy log-probs for the KL term / metric.
        kl_coef: ``beta`` (spec ``algorithm.klCoefficient``); ``> 0`` requires ``ref_logprobs``.
        aggregation: ``token-mean`` | ``seq-mean-token-mean`` | ``seq-mean-token-sum-norm``.
        sample_mask: ``Bool[B]``; False rows (excluded groups) leave numerator and denominator.
        max_tokens: constant divisor of ``seq-mean-token-sum-norm`` (default ``T``).
        logits: ``Tensor[B, T, V]``, only for the entropy metric (no gradient through it).
        entropy: ``Tensor[B, T]``, the per-token entropies themselves (the chunked
            log-prob path computes them without ``[B, T, V]`` logits); instead of ``logits``.
        loss_type: registered policy loss, spec ``algorithm.policyLoss``: ``clipped`` |
            ``gspo`` | ``cispo`` | ``gvpo`` (which ignores the clip and needs
            ``config.group_size`` and whole groups).
        rollout_logprobs: ``Tensor[B, T]``, the rollout engine's log-probs when
            ``old_logprobs`` are the trainer's own (``algorithm.rolloutCorrection``); with
            ``correction`` (mode tis or mis) each token's loss is weighted
            (:mod:`agpo_trainer.algorithms.correction`).

    Returns:
        ``(loss, metrics)``: ``loss`` a scalar (float32/float64) with a graph to ``logprobs``;
        ``metrics`` python floats over the included response tokens, named as the fields of
        the metrics table (``agpo_api.metrics_table``, which says how micro-batches and ranks
        combine each): ``loss``, ``policy_loss``, ``kl`` (when ``ref_logprobs`` given),
        ``entropy`` (when ``logits`` or ``entropy`` given), ``clip_ratio_low``,
        ``clip_ratio_high``, ``ratio_mean``, ``ratio_min`` and ``ratio_max`` (``inf`` and ``-inf``
        when no token is included: neutral in a min or max over micro-batches and ranks), and
        what the loss adds (``gvpo_mse`` with ``gvpo``).
    """
    _check_shapes(
        logprobs, old_logprobs, advantages, response_mask, ref_logprobs, sample_mask, logits
    )
    if config.clip_low < 0 or config.clip_high < 0 or config.clip_low > 1:
        raise ValueError(
            f"need 0 <= clip_low <= 1 and clip_high >= 0, got {config.clip_low}, {config.clip_high}"
        )
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
    corrected = correction is not None and correction.mode != "none"
    if corrected and (rollout_logprobs is None or rollout_logprobs.shape != logprobs.shape):
        raise ValueError("rolloutCorrection needs rollout_logprobs [B, T] beside old_logprobs")
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

    out = loss_fn(log_ratio, adv, token_mask, config)
    per_token = out.per_token_loss
    rollout: Tensor | None = None
    weights: Tensor | None = None
    if corrected:
        assert rollout_logprobs is not None and correction is not None
        rollout = rollout_logprobs.detach().to(dtype)
        weights = correction_weights(old, rollout, valid, correction)
        per_token = per_token * weights
    policy_loss = agg_fn(per_token, token_mask, seq_mask, max_tokens)

    kl: Tensor | None = None
    if ref_logprobs is not None:
        kl = k3(torch.where(valid, ref_logprobs.detach().to(dtype) - logp, zero))
    if kl is not None and kl_coef > 0:
        # Per-token KL in the loss (GRPO). Every aggregation is linear, so
        # agg(pg + beta * kl) == agg(pg) + beta * agg(kl).
        loss = policy_loss + kl_coef * agg_fn(kl, token_mask, seq_mask, max_tokens)
    else:
        loss = policy_loss

    with torch.no_grad():
        counted = token_mask > 0
        count = counted.sum()
        values: dict[str, Tensor] = {
            "loss": loss,
            "policy_loss": policy_loss,
            "clip_ratio_low": _masked_mean(out.clipped_low, counted, count),
            "clip_ratio_high": _masked_mean(out.clipped_high, counted, count),
            "ratio_mean": _masked_mean(out.ratio, counted, count),
            "ratio_min": _masked_extreme(out.ratio, counted, largest=False),
            "ratio_max": _masked_extreme(out.ratio, counted, largest=True),
            **out.extra,
        }
        if kl is not None:
            values["kl"] = _masked_mean(kl, counted, count)
        if rollout is not None and weights is not None:
            gap = rollout_trainer_k3(old, rollout, valid)
            values["rollout_trainer_kl"] = _masked_mean(gap, counted, count)
            values["is_weight_mean"] = _masked_mean(weights, counted, count)
            values["is_masked_ratio"] = _masked_mean(weights == 0, counted, count)
        if logits is not None:
            entropy = entropy_from_logits(logits.detach())
        if entropy is not None:
            values["entropy"] = _masked_mean(entropy.detach(), counted, count)
        metrics = _to_floats(values)
    return loss, metrics
