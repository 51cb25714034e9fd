"""Scoring a rollout batch: named/custom rewards, their weighted sum, what counts as correct,
and the length reward, all as the resolved ``spec.algorithm`` says (``agpo_api.resolved``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from agpo_api.catalog import REWARDS
from agpo_api.resolved import ResolvedAlgorithm
from agpo_trainer.rewards.base import REWARD_FUNCTIONS, RewardFn, call_reward_function
from agpo_trainer.rewards.custom import is_custom_spec, load_reward_function
from agpo_trainer.rewards.length import compute_length_reward

LENGTH_COMPONENT = "length"


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


def _as_lengths(lengths: Tensor | Sequence[int]) -> Tensor:
    if isinstance(lengths, Tensor):
        return lengths
    return torch.as_tensor(list(lengths), dtype=torch.long)


def judge(
    prompts: Sequence[str],
    completions: Sequence[str],
    answers: Sequence[str],
    algo: ResolvedAlgorithm,
    *,
    finished: Sequence[bool],
    device: torch.device | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """Every reward of ``algo.rewards`` by key (``Tensor[N]`` float32 each) and ``correct
    Bool[N]``: ``value > correct_threshold`` of the deciding reward, unweighted (``accuracy``
    is computed for it when it is not among the rewards; it then stays out of the total).

    The truncation rule, one for training and evaluation: a completion that did not finish
    (``finished`` False: cut at maxCompletionTokens without an end token or a stop string)
    is wrong: not ``correct``, and 0 from every builtin reward that reads the final answer
    (its catalog traits say ``graded``: ``accuracy``), whatever its text says. Custom reward
    functions get the text as it is."""
    n = len(completions)
    if len(prompts) != n or len(answers) != n:
        raise ValueError(
            f"prompts ({len(prompts)}), completions ({n}) and answers ({len(answers)}) "
            f"must have the same length"
        )
    keys = [r.key for r in algo.rewards]
    if len(set(keys)) != len(keys) or LENGTH_COMPONENT in keys:
        raise ValueError(f"reward names must be unique and not {LENGTH_COMPONENT!r}: {keys}")

    def values(key: str) -> Tensor:
        out = call_reward_function(
            get_reward_function(key), prompts, completions, answers, name=key
        )
        return torch.tensor(out, dtype=torch.float32, device=device)

    components = {key: values(key) for key in keys}
    deciding = algo.correct_reward
    if deciding not in components and deciding != "accuracy":
        raise ValueError(
            f"correct names reward {deciding!r}, which is not among the rewards {keys}; "
            f"name one of them or accuracy"
        )
    decisive = components[deciding] if deciding in components else values(deciding)
    done = torch.tensor(list(finished), dtype=torch.bool, device=device)
    correct = (decisive > float(algo.correct_threshold)) & done
    for key in components:  # builtin rewards that read the final answer: 0 when cut short
        if key in REWARDS and REWARDS.traits(key).graded:
            components[key] = components[key] * done
    return components, correct


def score(
    prompts: Sequence[str],
    completions: Sequence[str],
    answers: Sequence[str],
    lengths: Tensor | Sequence[int],
    group_size: int,
    algo: ResolvedAlgorithm,
    *,
    finished: Sequence[bool],
    length_values: Tensor | Sequence[int] | None = None,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Score ``N`` completions: rewards, their weighted sum and the length reward.

    Args:
        prompts / completions / answers: ``N`` strings each (prompt repeated per completion).
        lengths: ``Tensor[N]`` or ints, completion lengths in tokens.
        group_size: ``G``; group ``g`` is ``[g*G:(g+1)*G]``.
        algo: the resolved ``spec.algorithm``: the rewards with their weights, what counts as
            correct, the length reward.
        length_values: ``[N]`` the lengths the length reward measures, default ``lengths``
            (``lengthReward.target: reasoning`` passes the reasoning tokens).
        finished: ``[N]`` whether each completion finished; a truncated one is wrong
            (:func:`judge`).

    Returns:
        ``(total Tensor[N] float32, components {name: Tensor[N]}, correct Bool[N])``.
        ``components`` holds every reward by name and, with a length reward, ``"length"``
        (already scaled by its coefficient, weight 1). Tensors live on ``lengths``' device.
    """
    n = len(completions)
    length_t = _as_lengths(lengths)
    if length_t.shape != (n,):
        raise ValueError(f"lengths must be [N]=({n},), got {tuple(length_t.shape)}")
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"{n} completions are not divisible into groups of {group_size}")
    device = length_t.device
    components, is_correct = judge(
        prompts, completions, answers, algo, finished=finished, device=device
    )
    weights = {r.key: float(r.weight) for r in algo.rewards}
    if algo.length_reward.active:
        measured = length_t if length_values is None else _as_lengths(length_values).to(device)
        if measured.shape != (n,):
            raise ValueError(f"length_values must be [N]=({n},), got {tuple(measured.shape)}")
        components[LENGTH_COMPONENT] = compute_length_reward(
            algo.length_reward, measured, is_correct, group_size
        ).to(device)
    if not components:
        raise ValueError("score needs at least one reward or a length reward")
    return combine_rewards(components, weights), components, is_correct
