"""Scoring a rollout batch: named/custom rewards, weighted combination, length reward.

Independent of the spec model (plain arguments); the trainer glues ``spec.rewards`` and
``spec.algorithm.lengthReward`` to :func:`score`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from agpo_trainer.rewards.base import (
    REWARD_FUNCTIONS,
    RewardFn,
    call_reward_function,
    reward_bounds,
)
from agpo_trainer.rewards.custom import is_custom_spec, load_reward_function
from agpo_trainer.rewards.length import compute_length_reward

LENGTH_COMPONENT = "length"
CORRECT_THRESHOLD = 0.5  # "correct" = accuracy reward > 0.5


def get_reward_function(name: str) -> RewardFn:
    """A registered reward (``accuracy``, ``format``) or a ``"module:callable"`` spec.

    Raises ValueError listing the registered names for an unknown plain name, and
    :class:`RewardFunctionError` for a custom spec that cannot be loaded.
    """
    if is_custom_spec(name):
        return load_reward_function(name)
    return REWARD_FUNCTIONS.get(name)


def combine_rewards(components: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """Weighted sum ``sum_k w_k * components[k]``, computed in float32.

    Args:
        components: name -> ``Tensor[N]`` (all the same shape and device).
        weights: name -> weight. A component without a weight counts with weight 1.0 (e.g. the
            already-scaled ``length`` component); a weight naming no component is an error
            (a typo would otherwise silently drop a reward).

    Returns:
        ``Tensor[N]`` float32 on the components' device.
    """
    if not components:
        raise ValueError("combine_rewards needs at least one component")
    unknown = sorted(set(weights) - set(components))
    if unknown:
        raise ValueError(
            f"weights given for unknown reward components {unknown}; "
            f"components: {', '.join(components)}"
        )
    shapes = {name: tuple(t.shape) for name, t in components.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
        raise ValueError(f"reward components must all be 1-D of the same length, got {shapes}")
    total: Tensor | None = None
    for name, values in components.items():
        term = values.to(torch.float32) * float(weights.get(name, 1.0))
        total = term if total is None else total + term.to(total.device)
    assert total is not None
    return total


def attainable_reward_range(
    rewards: Sequence[tuple[str, float]],
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> tuple[float, float] | None:
    """``(min, max)`` of ``sum_k w_k r_k`` over the rewards' bounds.

    This is what AGPO's zero-variance rule compares a homogeneous group's reward with (pass it
    as ``apply_zero_variance(..., min_reward=lo, max_reward=hi)``). ``bounds`` gives the range
    of custom functions by name (spec ``rewards[].bounds``); builtin rewards declare theirs.
    Length rewards are left out: they are 0 on homogeneous groups (AGPO by construction; Kimi
    when lengths are equal; overlong below the buffer), except AGPO's with scope ``all``,
    whose top the caller adds (:func:`agpo_trainer.rewards.length.homogeneous_bonus`).
    Returns None when a reward has no known range (the spec refuses zeroVariance agpo then).
    """
    declared = dict(bounds or {})
    lo = hi = 0.0
    for name, weight in rewards:
        bound = declared.get(name) or reward_bounds(name)
        if bound is None:
            return None
        a, b = weight * bound[0], weight * bound[1]
        lo += min(a, b)
        hi += max(a, b)
    return lo, hi


def _as_lengths(lengths: Tensor | Sequence[int]) -> Tensor:
    if isinstance(lengths, Tensor):
        return lengths
    return torch.as_tensor(list(lengths), dtype=torch.long)


def score(
    prompts: Sequence[str],
    completions: Sequence[str],
    answers: Sequence[str],
    lengths: Tensor | Sequence[int],
    group_size: int,
    rewards: Sequence[tuple[str, float]] = (("accuracy", 1.0),),
    length_reward: tuple[str, float] | tuple[str, float, int | None, int | None] | None = None,
    correct: tuple[str, float] = ("accuracy", CORRECT_THRESHOLD),
    *,
    length_scope: str = "mixed",
    length_values: Tensor | Sequence[int] | None = None,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Score ``N`` completions: rewards, their weighted sum and the length reward.

    Args:
        prompts / completions / answers: ``N`` strings each (prompt repeated per completion).
        lengths: ``Tensor[N]`` or ints, completion lengths in tokens.
        group_size: ``G``; group ``g`` is ``[g*G:(g+1)*G]``.
        rewards: ``(name, weight)`` pairs; ``name`` is a registered reward (``accuracy``,
            ``format``) or ``"module:callable"``.
        length_reward: ``(type, coef[, max_tokens[, buffer_tokens]])`` with type
            ``none | agpo | kimi | overlong`` (spec ``algorithm.lengthReward``), or None.
        length_scope: ``agpo``'s groups, ``mixed`` | ``all`` (``lengthReward.scope``).
        length_values: ``[N]`` the lengths the length reward measures, default ``lengths``
            (``lengthReward.target: reasoning`` passes the reasoning tokens).

    Returns:
        ``(total Tensor[N] float32, components {name: Tensor[N]}, correct Bool[N])``.
        ``components`` holds every reward by name and, with a length reward, ``"length"``
        (already scaled by ``coef``, weight 1). ``correct`` is ``value > threshold`` of the
        reward ``correct = (name, threshold)`` names (spec ``algorithm.correct``; default
        ``accuracy > 0.5``), unweighted; ``accuracy`` is computed for it even when it is not
        among ``rewards`` (it is then not in the total). Tensors live on ``lengths``' device.
    """
    n = len(completions)
    if len(prompts) != n or len(answers) != n:
        raise ValueError(
            f"prompts ({len(prompts)}), completions ({n}) and answers ({len(answers)}) "
            f"must have the same length"
        )
    length_t = _as_lengths(lengths)
    if length_t.shape != (n,):
        raise ValueError(f"lengths must be [N]=({n},), got {tuple(length_t.shape)}")
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"{n} completions are not divisible into groups of {group_size}")
    names = [name for name, _ in rewards]
    if len(set(names)) != len(names) or LENGTH_COMPONENT in names:
        raise ValueError(f"reward names must be unique and not {LENGTH_COMPONENT!r}: {names}")
    device = length_t.device

    components: dict[str, Tensor] = {}
    weights: dict[str, float] = {}
    for name, weight in rewards:
        fn = get_reward_function(name)
        values = call_reward_function(fn, prompts, completions, answers, name=name)
        components[name] = torch.tensor(values, dtype=torch.float32, device=device)
        weights[name] = float(weight)

    judge, threshold = correct
    if judge in components:
        decisive = components[judge]
    elif judge == "accuracy":
        values = call_reward_function(
            REWARD_FUNCTIONS.get("accuracy"), prompts, completions, answers, name="accuracy"
        )
        decisive = torch.tensor(values, dtype=torch.float32, device=device)
    else:
        raise ValueError(
            f"correct names reward {judge!r}, which is not among the rewards {names}; "
            f"name one of them or accuracy"
        )
    is_correct = decisive > float(threshold)

    if length_reward is not None and length_reward[0] != "none":
        kind, coef, *rest = length_reward
        max_tokens = rest[0] if len(rest) > 0 else None
        buffer_tokens = rest[1] if len(rest) > 1 else None
        measured = length_t if length_values is None else _as_lengths(length_values).to(device)
        if measured.shape != (n,):
            raise ValueError(f"length_values must be [N]=({n},), got {tuple(measured.shape)}")
        components[LENGTH_COMPONENT] = compute_length_reward(
            kind,
            measured,
            is_correct,
            group_size,
            coef=float(coef),
            max_tokens=max_tokens,
            buffer_tokens=buffer_tokens,
            scope=length_scope,
        ).to(device)

    if not components:
        raise ValueError("score needs at least one reward or a length reward")
    return combine_rewards(components, weights), components, is_correct
