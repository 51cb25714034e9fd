"""Group-relative advantages: the estimators (GRPO, Dr. GRPO, REINFORCE) for groups with reward
variance, and the one zero-variance predicate; the policies for the groups without variance
(AGPO v1 +-1, mask, resample, keep) are in :mod:`agpo_trainer.algorithms.zero_variance`.

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

Every registered estimator receives one :class:`AdvantageOptions`, built from the resolved
``spec.algorithm`` (:meth:`AdvantageOptions.of`) in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from agpo_api.catalog import ADVANTAGES, EstimatorTraits
from agpo_api.models import DEFAULT_ZERO_VARIANCE_ADVANTAGE
from agpo_api.resolved import ADVANTAGE_EPS, ResolvedAlgorithm
from agpo_trainer.registry import Registry

ZERO_VARIANCE_ATOL = 1e-6  # the homogeneity test's relative tolerance (module docstring)


@dataclass(frozen=True)
class AdvantageOptions:
    """What every registered estimator and zero-variance policy receives, built from the
    resolved ``spec.algorithm`` in one place (:meth:`of`); each uses what it needs.

    ``reward_range`` is the attainable ``(min, max)`` of the summed rewards, known only when
    every reward declares bounds; a part that reads it declares ``uses_reward_range`` in its
    catalog traits (the spec then refuses rewards without bounds), and reading
    :attr:`min_reward`/:attr:`max_reward` without a range raises instead of guessing.
    """

    eps: float = ADVANTAGE_EPS
    reward_range: tuple[float, float] | None = None
    zero_variance_value: float = DEFAULT_ZERO_VARIANCE_ADVANTAGE

    def __post_init__(self) -> None:
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.reward_range is not None and self.reward_range[0] > self.reward_range[1]:
            lo, hi = self.reward_range
            raise ValueError(f"min_reward ({lo}) must not exceed max_reward ({hi})")

    @staticmethod
    def of(algo: ResolvedAlgorithm) -> AdvantageOptions:
        """The options of a resolved ``spec.algorithm``."""
        return AdvantageOptions(
            eps=algo.advantage_eps,
            reward_range=algo.reward_range,
            zero_variance_value=algo.zero_variance_advantage,
        )

    def _bounds(self) -> tuple[float, float]:
        if self.reward_range is None:
            raise ValueError(
                "the attainable reward range is unknown (a custom reward without bounds); a "
                "part that reads it must declare uses_reward_range in agpo_api.catalog"
            )
        return self.reward_range

    @property
    def min_reward(self) -> float:
        return float(self._bounds()[0])

    @property
    def max_reward(self) -> float:
        return float(self._bounds()[1])


#: The options when a caller gives none: no reward range (what reads one then raises).
DEFAULT_OPTIONS = AdvantageOptions()

# fn(grouped[num_groups, G] float32+, homogeneous Bool[num_groups], options) -> [num_groups, G]
AdvantageEstimator = Callable[[Tensor, Tensor, AdvantageOptions], Tensor]

ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator, EstimatorTraits] = Registry(
    "advantage estimator", ADVANTAGES
)


def register_advantage_estimator(
    name: str, *, traits: EstimatorTraits | None = None
) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: register ``fn(grouped, homogeneous, options) -> grouped advantages``.

    ``grouped`` is ``Tensor[num_groups, G]`` in float32 (float64 kept), ``homogeneous`` is
    ``Bool[num_groups]`` (see module docstring), ``options`` an :class:`AdvantageOptions`.
    A new name gives its ``traits`` (``EstimatorTraits()``: it reads no reward range).
    """
    return ADVANTAGE_ESTIMATORS.register(name, traits=traits)


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


def is_homogeneous(grouped: Tensor, atol: float = ZERO_VARIANCE_ATOL) -> Tensor:
    """``Bool[num_groups]``: True where ``max - min <= atol * max(1, max|r|)`` (see module doc)."""
    hi = grouped.amax(dim=-1)
    lo = grouped.amin(dim=-1)
    scale = torch.maximum(hi.abs(), lo.abs()).clamp(min=1.0)
    return (hi - lo) <= atol * scale


def homogeneous_groups(rewards: Tensor, group_size: int) -> Tensor:
    """``Bool[num_groups]``: True where the group's rewards are all equal (zero variance).

    The one zero-variance predicate: the advantages, the zero-variance policies, DAPO's
    resampling and the step statistics all ask this function, so a group one of them calls
    varied is never masked by another. ``max - min <= 1e-6 * max(1, max|r|)`` (module doc).
    """
    return is_homogeneous(group_view(rewards.detach(), group_size))


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


# ----------------------------------------------------------------------------- public API


def compute_advantages(
    rewards: Tensor,
    group_size: int,
    estimator: str = "grpo",
    *,
    options: AdvantageOptions = DEFAULT_OPTIONS,
) -> Tensor:
    """Group-relative advantages, one scalar per completion; 0 on homogeneous groups.

    Args:
        rewards: ``Tensor[N]``; group ``g`` is ``rewards[g*G:(g+1)*G]``.
        group_size: ``G`` (completions per prompt).
        estimator: a registered name: ``grpo`` | ``dr_grpo`` | ``reinforce`` (spec
            ``algorithm.advantage``).
        options: :class:`AdvantageOptions` (``AdvantageOptions.of(resolved algorithm)``).

    Returns:
        ``Tensor[N]`` in the rewards' dtype (float32 for integer rewards) and device. Detached
        from any graph the rewards had: advantages are constants of the policy loss. What
        homogeneous groups get instead of 0 is :func:`apply_zero_variance`'s decision.
    """
    fn = get_advantage_estimator(estimator)
    grouped = group_view(rewards.detach(), group_size)
    adv = fn(grouped, is_homogeneous(grouped), options)
    return adv.reshape(-1).to(output_dtype(rewards.dtype))
