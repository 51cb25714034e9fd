"""``spec.algorithm.rewards`` and ``spec.algorithm.correct``: the reward terms and what counts as
a correct answer."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from agpo_api.base import CALLABLE_PATTERN, ApiModel, Rule, exactly_one
from agpo_api.models.presets import RewardName

#: A completion is correct when the deciding reward is above this (``correct.threshold``).
DEFAULT_CORRECT_THRESHOLD = 0.5


class RewardBounds(ApiModel):
    """The attainable range of a custom reward function, ``[min, max]``."""

    min: float = Field(description="The lowest value the function returns.")
    max: float = Field(description="The highest value the function returns.")

    rules = (
        Rule(
            "max",
            "self.max >= self.min",
            "bounds.max must be >= bounds.min",
            lambda s: s.max >= s.min,
        ),
    )


class RewardSpec(ApiModel):
    """One reward term: a builtin reward by name, or a Python function ``module:callable``."""

    name: RewardName | None = Field(
        default=None,
        description="Builtin reward: accuracy (math-verify, [0, 1]) or format ([0, 1]).",
    )
    function: Annotated[str, Field(pattern=CALLABLE_PATTERN, max_length=256)] | None = Field(
        default=None,
        description="Custom reward 'module:callable', called as fn(prompts, completions, answers) "
        "-> list[float].",
    )
    weight: float = Field(default=1.0, description="Weight in the summed reward.")
    bounds: RewardBounds | None = Field(
        default=None,
        description="A custom function's attainable range; zeroVariance agpo needs it (it gives "
        "a homogeneous group +v at the maximum of the summed range and -v at its minimum).",
    )

    rules = (
        Rule(
            "name",
            # `function` is a CEL keyword; Kubernetes exposes such fields as __name__.
            "has(self.name) != has(self.__function__)",
            "set exactly one of name or function in each reward",
            exactly_one("name", "function"),
        ),
        Rule(
            "bounds",
            "!has(self.bounds) || has(self.__function__)",
            "bounds are for custom functions; builtin rewards have theirs (accuracy and format: "
            "[0, 1]); remove bounds",
            lambda s: s.bounds is None or s.function is not None,
        ),
    )


class CorrectSpec(ApiModel):
    """What counts as a correct answer (for the length rewards and the accuracy metric)."""

    reward: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None,
        description="The reward that decides it: accuracy, or the name or function of one of "
        "algorithm.rewards; default accuracy (required when the rewards are custom functions "
        "only).",
    )
    threshold: float = Field(
        default=DEFAULT_CORRECT_THRESHOLD,
        description="A completion is correct when that reward is above this.",
    )
