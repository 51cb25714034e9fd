"""Length rewards: AGPO's brevity bonus, Kimi k1.5's length penalty, DAPO's overlong penalty.

All take ``lengths[N]`` (completion lengths in tokens, int or float) and, where the rule is
group-relative, ``correct Bool[N]`` and ``group_size`` (group ``g`` is ``[g*G:(g+1)*G]``).
They are vectorised over a ``view(-1, G)``, computed in float64 (float32 on devices without
float64) so the ``1e-6`` of the AGPO denominator is not rounded away, and returned as ``dtype``
(float32 by default) on the device of ``lengths``.

Spec ``algorithm.lengthReward.type`` -> function: ``agpo`` -> :func:`agpo_length_reward`,
``kimi`` -> :func:`kimi_length_reward`, ``overlong`` -> :func:`overlong_penalty`, ``none`` ->
zeros; :func:`compute_length_reward` dispatches through the ``LENGTH_REWARDS`` registry, whose
entries receive the resolved ``lengthReward`` section (``agpo_api.resolved``).
``lengthReward.scope`` (``mixed`` | ``all``, :data:`AGPO_SCOPES`) picks the groups AGPO's
bonus applies to; ``lengthReward.target`` is the caller's choice of ``lengths`` (completion
tokens, or reasoning tokens: :mod:`agpo_trainer.rewards.reasoning`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from agpo_api.catalog import LENGTH_REWARDS as CATALOG
from agpo_api.catalog import LengthRewardTraits
from agpo_api.resolved import ResolvedLengthReward
from agpo_trainer.algorithms.advantages import group_view
from agpo_trainer.registry import Registry

_AGPO_EPS = 1e-6  # AGPO authors' code: 1 - (L - Lmin) / (Lmax - Lmin + 1e-6)

#: ``lengthReward.scope`` -> which groups get AGPO's bonus: ``correct Bool[groups, G]`` ->
#: ``Bool[groups, 1]``. Neither scope rewards an all-wrong group (no correct answer to
#: prefer), so the bonus never lifts a failed group off the minimum reward.
AGPO_SCOPES: Registry[Callable[[Tensor], Tensor], None] = Registry("length reward scope")


@AGPO_SCOPES.register("mixed")
def _mixed_groups(ok: Tensor) -> Tensor:
    """The paper: mixed groups only, so the bonus never creates variance in a group that
    had none."""
    return ok.any(dim=-1, keepdim=True) & ~ok.all(dim=-1, keepdim=True)


@AGPO_SCOPES.register("all")
def _groups_with_a_correct_answer(ok: Tensor) -> Tensor:
    """Also all-correct groups, where AGPO's +1 otherwise says nothing about length."""
    return ok.any(dim=-1, keepdim=True)


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _grouped(lengths: Tensor, correct: Tensor | None, group_size: int) -> tuple[Tensor, Tensor]:
    """``lengths`` and ``correct`` as ``[num_groups, G]`` (float64 lengths, bool correct)."""
    grouped_len = group_view(lengths, group_size, name="lengths").to(_work_dtype(lengths.device))
    if correct is None:
        return grouped_len, torch.zeros_like(grouped_len, dtype=torch.bool)
    if correct.shape != lengths.shape:
        raise ValueError(
            f"correct {tuple(correct.shape)} must have the shape of lengths {tuple(lengths.shape)}"
        )
    return grouped_len, correct.to(device=lengths.device, dtype=torch.bool).view(-1, group_size)


def agpo_length_reward(
    lengths: Tensor,
    correct: Tensor,
    group_size: int,
    coef: float = 0.1,
    *,
    scope: str = "mixed",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """AGPO length reward (arXiv 2503.15952; the first author's ColossalAI ``feat/agpo`` code).

    For each *correct* completion in a group with mixed outcomes::

        r_i = coef * (1 - (L_i - L_min) / (L_max - L_min + 1e-6))

    with ``L_min``/``L_max`` over the correct completions of the group. The shortest correct
    answer gets ``coef``, the longest about 0; a lone correct answer (or ties) gets the full
    ``coef``. Incorrect answers and homogeneous (all-correct / all-wrong) groups get 0, so the
    bonus never creates variance in a group that had none.

    ``scope="all"`` also rewards the correct answers of all-correct groups (the same formula:
    their shortest gets ``coef``), so such a group now has reward variance whenever its
    lengths differ; an all-correct group of equal lengths gets ``coef`` each and stays
    homogeneous (at ``max + coef``: the range the zero-variance rule must compare with, see
    ``ResolvedLengthReward.homogeneous_bonus``). All-wrong groups get 0 in either scope.

    Args:
        lengths: ``Tensor[N]`` lengths in tokens (completion or reasoning tokens).
        correct: ``Bool[N]`` (accuracy > 0.5).
        group_size: ``G``.
        coef: bonus scale (spec ``algorithm.lengthReward.coefficient``, 0.1 in the paper).
        scope: ``mixed`` (the paper) or ``all`` (spec ``algorithm.lengthReward.scope``).

    Returns:
        ``Tensor[N]`` of ``dtype``.
    """
    groups_of = AGPO_SCOPES.get(scope)  # ValueError naming the valid scopes
    grouped_len, grouped_ok = _grouped(lengths, correct, group_size)
    inf = torch.tensor(float("inf"), dtype=grouped_len.dtype, device=grouped_len.device)
    l_min = torch.where(grouped_ok, grouped_len, inf).amin(dim=-1, keepdim=True)
    l_max = torch.where(grouped_ok, grouped_len, -inf).amax(dim=-1, keepdim=True)
    eligible = grouped_ok & groups_of(grouped_ok)
    # Non-eligible entries may hold inf - inf = NaN here; where() discards them.
    bonus = coef * (1.0 - (grouped_len - l_min) / (l_max - l_min + _AGPO_EPS))
    out = torch.where(eligible, bonus, torch.zeros_like(bonus))
    return out.reshape(-1).to(dtype)


def kimi_length_reward(
    lengths: Tensor,
    correct: Tensor,
    group_size: int,
    coef: float = 1.0,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Kimi k1.5 length penalty (arXiv 2501.12599, section 2.3.3).

    ``lambda_i = 0.5 - (L_i - L_min) / (L_max - L_min)`` with min/max over *all* completions of
    the group; reward ``coef * lambda_i`` for correct answers and ``coef * min(0, lambda_i)``
    for incorrect ones (short wrong answers are not rewarded). 0 for the whole group when all
    lengths are equal. The paper states the raw ``lambda`` (``coef = 1``).

    Args / Returns: as :func:`agpo_length_reward`.
    """
    grouped_len, grouped_ok = _grouped(lengths, correct, group_size)
    l_min = grouped_len.amin(dim=-1, keepdim=True)
    l_max = grouped_len.amax(dim=-1, keepdim=True)
    spread = l_max - l_min
    equal = spread == 0
    lam = 0.5 - (grouped_len - l_min) / torch.where(equal, torch.ones_like(spread), spread)
    reward = torch.where(grouped_ok, lam, lam.clamp(max=0.0))
    out = torch.where(equal, torch.zeros_like(reward), coef * reward)
    return out.reshape(-1).to(dtype)


def overlong_penalty(
    lengths: Tensor,
    max_tokens: int,
    buffer_tokens: int,
    *,
    coef: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """DAPO soft overlong punishment (arXiv 2503.14476, eq. 13), per completion.

    ``0`` if ``L <= max_tokens - buffer_tokens``; ``((max_tokens - buffer_tokens) - L) /
    buffer_tokens`` (linear from 0 down to -1) up to ``max_tokens``; ``-1`` beyond. With
    ``buffer_tokens == 0`` it is a hard ``-1`` above ``max_tokens``. Scaled by ``coef``.

    Args:
        lengths: ``Tensor[N]`` lengths in tokens.
        max_tokens: ``L_max`` (spec ``lengthReward.maxTokens``; usually the generation limit).
        buffer_tokens: ``L_cache`` (spec ``lengthReward.bufferTokens``), ``0 <= buffer <= max``.

    Returns:
        ``Tensor[N]`` of ``dtype`` in ``[-coef, 0]``.
    """
    if max_tokens is None or max_tokens <= 0:
        raise ValueError(f"overlong penalty needs max_tokens > 0, got {max_tokens!r}")
    if buffer_tokens is None or not 0 <= buffer_tokens <= max_tokens:
        raise ValueError(
            f"overlong penalty needs 0 <= buffer_tokens <= max_tokens ({max_tokens}), "
            f"got {buffer_tokens!r}"
        )
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D [N], got shape {tuple(lengths.shape)}")
    length = lengths.to(_work_dtype(lengths.device))
    if buffer_tokens == 0:
        penalty = torch.where(length > max_tokens, -1.0, 0.0).to(length.dtype)
    else:
        penalty = (((max_tokens - buffer_tokens) - length) / buffer_tokens).clamp(-1.0, 0.0)
    return (coef * penalty).to(dtype)


# ----------------------------------------------------------------------------- dispatch

# fn(lengths[N], correct Bool[N], group_size, spec) -> Tensor[N]: each type reads the fields of
# its resolved section it needs (coefficient; maxTokens/bufferTokens; scope)
LengthRewardFn = Callable[[Tensor, Tensor, int, ResolvedLengthReward], Tensor]

LENGTH_REWARDS: Registry[LengthRewardFn, LengthRewardTraits] = Registry("length reward", CATALOG)


def register_length_reward(
    name: str, *, traits: LengthRewardTraits | None = None
) -> Callable[[LengthRewardFn], LengthRewardFn]:
    """Decorator: register ``fn(lengths, correct, group_size, spec) -> Tensor[N]`` as
    ``algorithm.lengthReward.type``; ``spec`` is the resolved ``lengthReward`` section. A new
    name gives its ``traits`` (its default coefficient, whether it reads a limit or a scope)."""
    return LENGTH_REWARDS.register(name, traits=traits)


@register_length_reward("none")
def _none(lengths: Tensor, correct: Tensor, group_size: int, spec: ResolvedLengthReward) -> Tensor:
    return torch.zeros(lengths.shape, dtype=torch.float32, device=lengths.device)


@register_length_reward("agpo")
def _agpo(lengths: Tensor, correct: Tensor, group_size: int, spec: ResolvedLengthReward) -> Tensor:
    return agpo_length_reward(lengths, correct, group_size, spec.coefficient, scope=spec.scope)


@register_length_reward("kimi")
def _kimi(lengths: Tensor, correct: Tensor, group_size: int, spec: ResolvedLengthReward) -> Tensor:
    return kimi_length_reward(lengths, correct, group_size, spec.coefficient)


@register_length_reward("overlong")
def _overlong(
    lengths: Tensor, correct: Tensor, group_size: int, spec: ResolvedLengthReward
) -> Tensor:
    if spec.buffer_tokens is None:  # resolved: a type with the limit trait always has one
        raise ValueError("lengthReward.type 'overlong' needs bufferTokens")
    return overlong_penalty(lengths, spec.max_tokens, spec.buffer_tokens, coef=spec.coefficient)


def compute_length_reward(
    spec: ResolvedLengthReward, lengths: Tensor, correct: Tensor, group_size: int
) -> Tensor:
    """The resolved ``algorithm.lengthReward`` -> ``Tensor[N]`` float32."""
    return LENGTH_REWARDS.get(spec.type)(lengths, correct, group_size, spec)
