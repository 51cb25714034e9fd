"""Group-relative advantages: the estimators (GRPO, Dr. GRPO, REINFORCE) for groups with reward
variance, and the zero-variance policies (AGPO v1 +-1, mask, resample, keep) for the others.

Conventions (shared by every function here):

* ``rewards`` is a 1-D tensor of ``N`` scalar rewards, one per completion. Completions are
  grouped contiguously: group ``g`` (the ``G`` completions sampled for one prompt) is
  ``rewards[g*G:(g+1)*G]``. ``N`` not divisible by ``G`` raises ``ValueError``.
* Group statistics are computed in (at least) float32 whatever the input dtype (bfloat16 sums
  over a group lose too much precision); results come back in the input dtype (float32 for
  integer/bool rewards) on the input device.
* Everything is vectorised through a ``view(-1, G)``; there is no Python loop over groups.

Zero-variance groups. A group is *homogeneous* ("zero variance") when
``max_g - min_g <= atol * max(1, max|r_g|)`` (``atol = 1e-6``). We compare the range instead of
testing ``std == 0`` because the float mean of ``G`` equal values is not always bit-equal to the
value (e.g. ``0.1`` summed 3 times), which leaves a ~1e-9 std and a spurious ~1e-5 advantage;
the scaled tolerance absorbs such rounding for rewards of any magnitude while real reward
differences (>= 1e-3 in practice) are never merged. Every estimator returns exactly 0 on
homogeneous groups; what those groups get is the zero-variance policy's decision alone
(spec ``algorithm.zeroVariance``), whichever estimator is chosen.

AGPO v1 rule (arXiv 2503.15952 v1, "a revised advantage estimation method to mitigate
zero-variance situations"): on a homogeneous group, ``A_i = +v`` if the group's reward equals
the maximum attainable reward, ``-v`` if it equals the minimum attainable reward, and ``0``
otherwise (``v = zero_variance_value``, default 1). So an all-correct group is reinforced and an
all-wrong group is pushed down instead of contributing nothing. The bounds default to
``max_reward = 1.0`` and ``min_reward = 0.0``: the range of the ``accuracy`` reward (1.0/0.0)
that drives correctness. When rewards are weighted/combined, pass the attainable bounds
explicitly (see ``agpo_trainer.rewards.attainable_reward_range``). We do not infer them from
the batch: a batch in which every group failed would then call 0 the "maximum" and reward
failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from agpo_trainer.algorithms.registry import Registry

# Spec values of ``algorithm.zeroVariance``, in the order the docs list them.
ZERO_VARIANCE_MODES: tuple[str, ...] = ("agpo", "mask", "resample", "keep")

_DEFAULT_EPS = 1e-4  # TRL/verl GRPO: (r - mean) / (std + 1e-4)
_ZERO_VARIANCE_ATOL = 1e-6


@dataclass(frozen=True)
class AdvantageOptions:
    """Options passed to every registered estimator (estimators ignore what they do not use)."""

    eps: float = _DEFAULT_EPS
    max_reward: float = 1.0
    min_reward: float = 0.0
    zero_variance_value: float = 1.0


# fn(grouped[num_groups, G] float32+, homogeneous Bool[num_groups], options) -> [num_groups, G]
AdvantageEstimator = Callable[[Tensor, Tensor, AdvantageOptions], Tensor]

ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


def register_advantage_estimator(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: register ``fn(grouped, homogeneous, options) -> grouped advantages``.

    ``grouped`` is ``Tensor[num_groups, G]`` in float32 (float64 kept), ``homogeneous`` is
    ``Bool[num_groups]`` (see module docstring), ``options`` an :class:`AdvantageOptions`.
    """
    return ADVANTAGE_ESTIMATORS.register(name)


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """Return the estimator registered as ``name`` (ValueError listing valid names)."""
    return ADVANTAGE_ESTIMATORS.get(name)


# ----------------------------------------------------------------------------- helpers


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype group statistics are computed in: at least float32 (float64 is kept)."""
    if not dtype.is_floating_point:
        return torch.float32
    return torch.promote_types(dtype, torch.float32)


def output_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype results are returned in: the input's if floating, else float32."""
    return dtype if dtype.is_floating_point else torch.float32


def group_view(values: Tensor, group_size: int, *, name: str = "rewards") -> Tensor:
    """Reshape ``values[N]`` to ``[N // G, G]`` in the compute dtype (no copy when possible).

    Raises ValueError for non-1-D input, ``group_size < 1`` or ``N % G != 0``.
    """
    if values.dim() != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {tuple(values.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    n = values.shape[0]
    if n % group_size != 0:
        raise ValueError(
            f"{name} has {n} entries, not divisible by group_size={group_size}: completions must "
            f"come in contiguous groups of {group_size} (group g = {name}[g*G:(g+1)*G])"
        )
    return values.to(compute_dtype(values.dtype)).view(-1, group_size)


def _homogeneous_groups(grouped: Tensor, atol: float = _ZERO_VARIANCE_ATOL) -> Tensor:
    """``Bool[num_groups]``: True where ``max - min <= atol * max(1, max|r|)`` (see module doc)."""
    hi = grouped.amax(dim=-1)
    lo = grouped.amin(dim=-1)
    scale = torch.maximum(hi.abs(), lo.abs()).clamp(min=1.0)
    return (hi - lo) <= atol * scale


def zero_variance_mask(
    rewards: Tensor, group_size: int, *, atol: float = _ZERO_VARIANCE_ATOL
) -> Tensor:
    """``Bool[N]``: True where the completion's group has zero reward variance.

    Args:
        rewards: ``Tensor[N]`` (any real dtype, any device).
        group_size: ``G``; group ``g`` is ``rewards[g*G:(g+1)*G]``.
        atol: tolerance of the range test ``max - min <= atol * max(1, max|r|)``; exact
            equality is included, float rounding of a group mean is absorbed (module docstring).

    Returns:
        ``Bool[N]`` on ``rewards.device``. Groups of size 1 are always homogeneous.
    """
    grouped = group_view(rewards, group_size)
    homogeneous = _homogeneous_groups(grouped, atol)
    return homogeneous.repeat_interleave(group_size)


def _grouped_std(grouped: Tensor) -> Tensor:
    """Unbiased std per group (torch default, as TRL/verl); 0 for groups of size 1 (not NaN)."""
    if grouped.shape[-1] < 2:
        return torch.zeros((*grouped.shape[:-1], 1), dtype=grouped.dtype, device=grouped.device)
    return grouped.std(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------- estimators


@register_advantage_estimator("grpo")
def grpo_advantages(grouped: Tensor, homogeneous: Tensor, options: AdvantageOptions) -> Tensor:
    """GRPO (DeepSeekMath, arXiv 2402.03300): ``A_i = (r_i - mean_g) / (std_g + eps)``.

    ``std_g`` is torch's unbiased std (TRL/verl do the same). Shapes: ``[num_groups, G]`` in and
    out. Homogeneous groups get exactly 0.
    """
    centred = grouped - grouped.mean(dim=-1, keepdim=True)
    adv = centred / (_grouped_std(grouped) + options.eps)
    return adv.masked_fill(homogeneous.unsqueeze(-1), 0.0)


@register_advantage_estimator("dr_grpo")
def dr_grpo_advantages(grouped: Tensor, homogeneous: Tensor, options: AdvantageOptions) -> Tensor:
    """Dr. GRPO (arXiv 2503.20783): ``A_i = r_i - mean_g`` (no std division, which biases
    towards too easy/too hard prompts). Shapes ``[num_groups, G]``; homogeneous groups -> 0.
    GVPO (arXiv 2504.19599) uses the same centred reward in its weights."""
    adv = grouped - grouped.mean(dim=-1, keepdim=True)
    return adv.masked_fill(homogeneous.unsqueeze(-1), 0.0)


@register_advantage_estimator("reinforce")
def reinforce_advantages(grouped: Tensor, homogeneous: Tensor, options: AdvantageOptions) -> Tensor:
    """REINFORCE without a baseline, ``A_i = r_i`` (Williams 1992), as Reinforce-Rej uses it
    (Xiong et al., arXiv 2504.11343, with rewards +-1; homogeneous groups are its filter's,
    i.e. ``zeroVariance: mask``). Shapes ``[num_groups, G]``; homogeneous groups -> 0."""
    return grouped.masked_fill(homogeneous.unsqueeze(-1), 0.0)


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
        return (value - bound).abs() <= _ZERO_VARIANCE_ATOL * scale

    signal = torch.zeros_like(value)
    signal = signal.masked_fill(_equals(options.min_reward), -v)
    # max checked last so a degenerate max == min range counts as success.
    return signal.masked_fill(_equals(options.max_reward), v)


# ----------------------------------------------------------------------------- public API


def _options(
    max_reward: float | None,
    min_reward: float | None,
    eps: float,
    zero_variance_value: float,
) -> AdvantageOptions:
    hi = 1.0 if max_reward is None else float(max_reward)
    lo = 0.0 if min_reward is None else float(min_reward)
    if lo > hi:
        raise ValueError(f"min_reward ({lo}) must not exceed max_reward ({hi})")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return AdvantageOptions(
        eps=eps, max_reward=hi, min_reward=lo, zero_variance_value=float(zero_variance_value)
    )


def compute_advantages(
    rewards: Tensor,
    group_size: int,
    estimator: str = "grpo",
    *,
    eps: float = _DEFAULT_EPS,
) -> Tensor:
    """Group-relative advantages, one scalar per completion; 0 on homogeneous groups.

    Args:
        rewards: ``Tensor[N]``; group ``g`` is ``rewards[g*G:(g+1)*G]``.
        group_size: ``G`` (completions per prompt).
        estimator: a registered name: ``grpo`` | ``dr_grpo`` | ``reinforce`` (spec
            ``algorithm.advantage``).
        eps: added to the std (GRPO), 1e-4 like TRL/verl.

    Returns:
        ``Tensor[N]`` in the rewards' dtype (float32 for integer rewards) and device. Detached
        from any graph the rewards had: advantages are constants of the policy loss. What
        homogeneous groups get instead of 0 is :func:`apply_zero_variance`'s decision.
    """
    fn = get_advantage_estimator(estimator)
    grouped = group_view(rewards.detach(), group_size)
    homogeneous = _homogeneous_groups(grouped)
    adv = fn(grouped, homogeneous, _options(None, None, eps, 1.0))
    return adv.reshape(-1).to(output_dtype(rewards.dtype))


# ----------------------------------------------------------------------------- zero variance

# fn(advantages[N], grouped rewards[num_groups, G], homogeneous Bool[N], options)
#   -> (advantages[N], sample_mask Bool[N])
ZeroVariancePolicy = Callable[[Tensor, Tensor, Tensor, AdvantageOptions], tuple[Tensor, Tensor]]

ZERO_VARIANCE_POLICIES: Registry[ZeroVariancePolicy] = Registry("zeroVariance mode")


def register_zero_variance_policy(
    name: str,
) -> Callable[[ZeroVariancePolicy], ZeroVariancePolicy]:
    """Decorator: register ``fn(advantages[N], grouped[num_groups, G], homogeneous Bool[N],
    options) -> (advantages[N], sample_mask Bool[N])`` as an ``algorithm.zeroVariance`` mode."""
    return ZERO_VARIANCE_POLICIES.register(name)


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
    """DAPO dynamic sampling (arXiv 2503.14476): drawing more prompts is the trainer loop's
    job; whatever still has zero variance afterwards is masked exactly like ``mask``."""
    return mask_zero_variance(advantages, grouped, homogeneous, options)


def apply_zero_variance(
    advantages: Tensor,
    rewards: Tensor,
    group_size: int,
    mode: str,
    *,
    max_reward: float | None = None,
    min_reward: float | None = None,
    zero_variance_value: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Apply the spec's ``algorithm.zeroVariance`` policy to advantages of any estimator.

    Modes (registered in :data:`ZERO_VARIANCE_POLICIES`): ``agpo`` (``+v/-v/0``, all kept),
    ``mask`` and ``resample`` (0 and excluded through ``sample_mask``), ``keep`` (0, kept).

    Args:
        advantages: ``Tensor[N]`` from :func:`compute_advantages`.
        rewards: ``Tensor[N]`` the advantages were computed from.
        group_size: ``G``.
        mode: one of :data:`ZERO_VARIANCE_MODES`.
        max_reward / min_reward: the attainable reward range the ``agpo`` rule compares a
            homogeneous group's reward with; ``None`` means 1.0 / 0.0 (the ``accuracy`` range).
        zero_variance_value: ``v``.

    Returns:
        ``(advantages Tensor[N], sample_mask Bool[N])`` -- pass ``sample_mask`` to
        :func:`agpo_trainer.algorithms.compute_policy_loss` (after expanding to rows).
    """
    if mode not in ZERO_VARIANCE_MODES:
        raise ValueError(
            f"unknown zeroVariance mode {mode!r}; valid names: {', '.join(ZERO_VARIANCE_MODES)}"
        )
    grouped = group_view(rewards.detach(), group_size)
    homogeneous = _homogeneous_groups(grouped).repeat_interleave(group_size)
    options = _options(max_reward, min_reward, _DEFAULT_EPS, zero_variance_value)
    return ZERO_VARIANCE_POLICIES.get(mode)(advantages, grouped, homogeneous, options)


def compute_advantages_and_mask(
    rewards: Tensor,
    group_size: int,
    *,
    advantage: str = "grpo",
    zero_variance: str = "agpo",
    max_reward: float | None = None,
    min_reward: float | None = None,
    eps: float = _DEFAULT_EPS,
    zero_variance_value: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Spec glue: ``algorithm.advantage`` then ``algorithm.zeroVariance``.

    The estimator decides the groups with variance; ``zero_variance`` alone decides the
    homogeneous ones: ``agpo`` -> ``+v/-v/0``, ``keep`` -> 0, ``mask``/``resample`` -> 0 and
    excluded through ``sample_mask``.

    Returns:
        ``(advantages Tensor[N], sample_mask Bool[N])``.
    """
    adv = compute_advantages(rewards, group_size, advantage, eps=eps)
    return apply_zero_variance(
        adv,
        rewards,
        group_size,
        zero_variance,
        max_reward=max_reward,
        min_reward=min_reward,
        zero_variance_value=zero_variance_value,
    )
