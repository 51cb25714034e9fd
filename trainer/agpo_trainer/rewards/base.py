"""Reward-function protocol, the registry of named rewards and the output checks.

A reward function scores a batch of completions::

    fn(prompts: list[str], completions: list[str], answers: list[str]) -> list[float]

``prompts[i]`` is the prompt completion ``i`` answered (repeated ``G`` times per group),
``completions[i]`` the generated text, ``answers[i]`` the dataset's reference answer. It returns
one finite real number per completion (a list/tuple, or a 1-D tensor/array of length ``N``).
Built-ins (``accuracy``, ``format``) are registered by name; user functions are loaded from a
``"module:callable"`` spec (``agpo_trainer.rewards.custom``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

from agpo_api.catalog import REWARDS, RewardTraits
from agpo_trainer.registry import Registry

RewardFn = Callable[[list[str], list[str], list[str]], Sequence[float]]

REWARD_FUNCTIONS: Registry[RewardFn, RewardTraits] = Registry("reward function", REWARDS)


class RewardFunctionError(ValueError):
    """A reward function could not be loaded or returned something unusable (one-line message)."""


def one_line(text: object) -> str:
    """Collapse whitespace/newlines so an error message stays on one line."""
    return " ".join(str(text).split())


def register_reward(
    name: str, *, bounds: tuple[float, float] | None = None
) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register a reward function under ``name``.

    A builtin name takes its attainable range from ``agpo_api.catalog.REWARDS``; a new name
    declares it with ``bounds=(lo, hi)`` (AGPO's zero-variance rule compares a homogeneous
    group's summed reward with the summed range: ``agpo_api.resolved``).
    """
    traits = None if bounds is None else RewardTraits((float(bounds[0]), float(bounds[1])))
    return REWARD_FUNCTIONS.register(name, traits=traits)


def check_reward_output(values: object, n: int, name: str) -> list[float]:
    """Validate a reward function's return value: ``n`` finite real numbers.

    Accepts a list/tuple of numbers or a 1-D tensor/ndarray (anything with ``tolist()``).
    Raises :class:`RewardFunctionError` with a one-line message otherwise.
    """
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        shape = tuple(getattr(values, "shape", ()))
        if len(shape) != 1:
            raise RewardFunctionError(
                f"reward function {name!r} must return {n} floats (a list or 1-D array), "
                f"got an array of shape {shape}"
            )
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise RewardFunctionError(
            f"reward function {name!r} must return a list of {n} floats, "
            f"got {type(values).__name__}"
        )
    if len(values) != n:
        raise RewardFunctionError(
            f"reward function {name!r} returned {len(values)} values for {n} completions "
            f"(it must return one float per completion)"
        )
    out: list[float] = []
    for i, v in enumerate(values):
        if not isinstance(v, numbers.Real):
            raise RewardFunctionError(
                f"reward function {name!r} returned a {type(v).__name__} at index {i}; "
                f"expected a float"
            )
        f = float(v)
        if not math.isfinite(f):
            raise RewardFunctionError(
                f"reward function {name!r} returned a non-finite value ({f}) at index {i}"
            )
        out.append(f)
    return out


def call_reward_function(
    fn: RewardFn,
    prompts: Sequence[str],
    completions: Sequence[str],
    answers: Sequence[str],
    *,
    name: str | None = None,
) -> list[float]:
    """Call ``fn`` and validate its output (see :func:`check_reward_output`).

    An exception inside ``fn`` is re-raised as :class:`RewardFunctionError` with a one-line
    message naming the function (the original is chained as ``__cause__``).
    """
    label = name or str(getattr(fn, "__qualname__", repr(fn)))
    n = len(completions)
    if len(prompts) != n or len(answers) != n:
        raise ValueError(
            f"prompts ({len(prompts)}), completions ({n}) and answers ({len(answers)}) "
            f"must have the same length"
        )
    try:
        values = fn(list(prompts), list(completions), list(answers))
    except RewardFunctionError:
        raise
    except Exception as e:
        raise RewardFunctionError(
            f"reward function {label!r} raised {type(e).__name__}: {one_line(e)}"
        ) from e
    return check_reward_output(values, n, label)
