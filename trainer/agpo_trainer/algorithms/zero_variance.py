"""Zero-variance policies: what a group whose rewards are all equal gets (spec
``algorithm.zeroVariance``), whichever estimator gave the others their advantages.

AGPO v1 rule (arXiv 2503.15952 v1, "a revised advantage estimation method to mitigate
zero-variance situations"): on a homogeneous group, ``A_i = +v`` if the group's reward equals
the maximum attainable reward, ``-v`` if it equals the minimum attainable reward, and ``0``
otherwise (``v = zero_variance_value``, default 1). So an all-correct group is reinforced and an
all-wrong group is pushed down instead of contributing nothing. The attainable range is the
resolved spec's (``agpo_api.resolved``: the rewards' declared bounds, weighted and summed); it
is never inferred from the batch: a batch in which every group failed would then call 0 the
"maximum" and reward failure. The policy declares ``uses_reward_range`` (agpo_api.catalog), so
the spec refuses rewards without bounds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from agpo_api.catalog import ZERO_VARIANCE, ZeroVarianceTraits
from agpo_api.resolved import ResolvedAlgorithm
from agpo_trainer.algorithms.advantages import (
    DEFAULT_OPTIONS,
    ZERO_VARIANCE_ATOL,
    AdvantageOptions,
    compute_advantages,
    group_view,
    is_homogeneous,
)
from agpo_trainer.registry import Registry


def agpo_zero_variance_signal(grouped: Tensor, options: AdvantageOptions) -> Tensor:
    """AGPO v1 signal per group, ``Tensor[num_groups, 1]``: ``+v`` / ``-v`` / ``0``.

    ``+v`` where the group's reward equals ``options.max_reward``, ``-v`` where it equals
    ``options.min_reward`` (same tolerance as the homogeneity test), else 0. Only meaningful on
    homogeneous groups; callers select those.
    """
    value = grouped[:, :1]
    v = options.zero_variance_value

    def _equals(bound: float) -> Tensor:
        scale = max(1.0, abs(bound))
        return (value - bound).abs() <= ZERO_VARIANCE_ATOL * scale

    signal = torch.zeros_like(value)
    signal = signal.masked_fill(_equals(options.min_reward), -v)
    # max checked last so a degenerate max == min range counts as success.
    return signal.masked_fill(_equals(options.max_reward), v)


# fn(advantages[N], grouped rewards[num_groups, G], homogeneous Bool[N], options)
#   -> (advantages[N], sample_mask Bool[N])
ZeroVariancePolicy = Callable[[Tensor, Tensor, Tensor, AdvantageOptions], tuple[Tensor, Tensor]]

ZERO_VARIANCE_POLICIES: Registry[ZeroVariancePolicy, ZeroVarianceTraits] = Registry(
    "zeroVariance mode", ZERO_VARIANCE
)


def register_zero_variance_policy(
    name: str, *, traits: ZeroVarianceTraits | None = None
) -> Callable[[ZeroVariancePolicy], ZeroVariancePolicy]:
    """Decorator: register ``fn(advantages[N], grouped[num_groups, G], homogeneous Bool[N],
    options) -> (advantages[N], sample_mask Bool[N])`` as an ``algorithm.zeroVariance`` mode."""
    return ZERO_VARIANCE_POLICIES.register(name, traits=traits)


@register_zero_variance_policy("agpo")
def agpo_zero_variance(
    advantages: Tensor, grouped: Tensor, homogeneous: Tensor, options: AdvantageOptions
) -> tuple[Tensor, Tensor]:
    """AGPO v1 (arXiv 2503.15952 v1): a homogeneous group at the maximum attainable reward gets
    ``+v``, at the minimum ``-v``, otherwise 0; every sample stays in the loss."""
    signal = agpo_zero_variance_signal(grouped, options).expand_as(grouped).reshape(-1)
    out = torch.where(homogeneous, signal.to(advantages.dtype), advantages)
    return out, torch.ones_like(homogeneous)


@register_zero_variance_policy("keep")
def keep_zero_variance(
    advantages: Tensor, grouped: Tensor, homogeneous: Tensor, options: AdvantageOptions
) -> tuple[Tensor, Tensor]:
    """Plain GRPO: homogeneous groups get 0 and still count in the loss's denominator."""
    return advantages.masked_fill(homogeneous, 0.0), torch.ones_like(homogeneous)


@register_zero_variance_policy("mask")
def mask_zero_variance(
    advantages: Tensor, grouped: Tensor, homogeneous: Tensor, options: AdvantageOptions
) -> tuple[Tensor, Tensor]:
    """AGPO v2/v3 loss mask and Reinforce-Rej's filter: homogeneous groups get 0 and leave the
    loss's numerator *and* denominator (``sample_mask`` False)."""
    return advantages.masked_fill(homogeneous, 0.0), ~homogeneous


@register_zero_variance_policy("resample")
def resample_zero_variance(
    advantages: Tensor, grouped: Tensor, homogeneous: Tensor, options: AdvantageOptions
) -> tuple[Tensor, Tensor]:
    """DAPO dynamic sampling (arXiv 2503.14476): drawing more prompts is the experience's job
    (its catalog traits say ``resamples``); whatever still has zero variance afterwards is
    masked exactly like ``mask``."""
    return mask_zero_variance(advantages, grouped, homogeneous, options)


def apply_zero_variance(
    advantages: Tensor,
    rewards: Tensor,
    group_size: int,
    mode: str,
    *,
    options: AdvantageOptions = DEFAULT_OPTIONS,
) -> tuple[Tensor, Tensor]:
    """Apply the spec's ``algorithm.zeroVariance`` policy to advantages of any estimator.

    Modes (registered in :data:`ZERO_VARIANCE_POLICIES`): ``agpo`` (``+v/-v/0``, all kept; it
    reads ``options.reward_range``), ``mask`` and ``resample`` (0 and excluded through
    ``sample_mask``), ``keep`` (0, kept).

    Returns:
        ``(advantages Tensor[N], sample_mask Bool[N])`` -- pass ``sample_mask`` to
        :func:`agpo_trainer.algorithms.compute_policy_loss` (after expanding to rows).
    """
    policy = ZERO_VARIANCE_POLICIES.get(mode)
    grouped = group_view(rewards.detach(), group_size)
    homogeneous = is_homogeneous(grouped).repeat_interleave(group_size)
    return policy(advantages, grouped, homogeneous, options)


def compute_advantages_and_mask(
    rewards: Tensor,
    group_size: int,
    *,
    advantage: str = "grpo",
    zero_variance: str = "agpo",
    options: AdvantageOptions = DEFAULT_OPTIONS,
) -> tuple[Tensor, Tensor]:
    """Spec glue: ``algorithm.advantage`` then ``algorithm.zeroVariance``.

    The estimator decides the groups with variance; ``zero_variance`` alone decides the
    homogeneous ones: ``agpo`` -> ``+v/-v/0``, ``keep`` -> 0, ``mask``/``resample`` -> 0 and
    excluded through ``sample_mask``.

    Returns:
        ``(advantages Tensor[N], sample_mask Bool[N])``.
    """
    adv = compute_advantages(rewards, group_size, advantage, options=options)
    return apply_zero_variance(adv, rewards, group_size, zero_variance, options=options)


def advantages_of(rewards: Tensor, algo: ResolvedAlgorithm) -> tuple[Tensor, Tensor]:
    """``(advantages, sample_mask)`` of a step's rewards under the resolved ``spec.algorithm``."""
    return compute_advantages_and_mask(
        rewards,
        algo.group_size,
        advantage=algo.advantage,
        zero_variance=algo.zero_variance,
        options=AdvantageOptions.of(algo),
    )
