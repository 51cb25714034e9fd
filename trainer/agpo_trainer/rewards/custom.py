"""User reward functions loaded from a ``"module:callable"`` spec.

The callable must have the reward signature (see :mod:`agpo_trainer.rewards.base`)::

    def my_reward(prompts: list[str], completions: list[str], answers: list[str]) -> list[float]

The module must be importable in the trainer image (on ``PYTHONPATH``); the attribute may be a
dotted path (``"pkg.mod:Scorer.score"``). Every failure raises :class:`RewardFunctionError`
with a one-line message saying what to fix.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from agpo_trainer.rewards.base import (
    RewardFn,
    RewardFunctionError,
    call_reward_function,
    one_line,
)


class CustomRewardFunction:
    """A loaded user reward function; calling it validates the returned values."""

    def __init__(self, spec: str, fn: RewardFn) -> None:
        self.spec = spec
        self.fn = fn

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]
    ) -> list[float]:
        return call_reward_function(self.fn, prompts, completions, answers, name=self.spec)

    def __repr__(self) -> str:
        return f"CustomRewardFunction({self.spec!r})"


def is_custom_spec(name: str) -> bool:
    """True for ``"module:callable"`` specs (built-in names have no colon)."""
    return ":" in name


def load_reward_function(spec: str) -> CustomRewardFunction:
    """Import ``"module:callable"`` and return it wrapped with output checks.

    Raises:
        RewardFunctionError: malformed spec, import failure, missing attribute, not callable.
    """
    module_name, sep, attr_path = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not module_name.strip() or not attr_path.strip():
        raise RewardFunctionError(
            f"invalid reward function spec {spec!r}: expected 'module:callable', "
            f"e.g. 'my_rewards:score'"
        )
    module_name, attr_path = module_name.strip(), attr_path.strip()
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, SyntaxError, errors raised at import time...
        raise RewardFunctionError(
            f"cannot import module {module_name!r} for reward function {spec!r}: "
            f"{type(e).__name__}: {one_line(e)} (is it on PYTHONPATH in the trainer image?)"
        ) from e
    obj: object = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise RewardFunctionError(
                f"module {module_name!r} has no attribute {attr_path!r} "
                f"(reward function spec {spec!r})"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardFunctionError(
            f"reward function {spec!r} is not callable (it is a {type(obj).__name__})"
        )
    return CustomRewardFunction(spec, obj)
