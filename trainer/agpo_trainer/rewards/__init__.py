"""Rewards: answer accuracy, format, length rewards, custom functions and their combination.

Reward function signature (built-in and custom)::

    fn(prompts: list[str], completions: list[str], answers: list[str]) -> list[float]

Named rewards (``REWARD_FUNCTIONS``, spec ``rewards[].name``): ``accuracy`` ->
:func:`accuracy_reward`, ``format`` -> :func:`format_reward`; ``rewards[].function``
(``"module:callable"``) -> :func:`load_reward_function`. See ``docs/algorithm.md`` for the
formulas and the spec mapping.
"""

from agpo_trainer.rewards.accuracy import (
    accuracy_reward,
    answer_is_correct,
    extract_answer,
    format_reward,
    normalize_answer,
    reference_answer,
)
from agpo_trainer.rewards.base import (
    REWARD_FUNCTIONS,
    RewardFn,
    RewardFunctionError,
    call_reward_function,
    check_reward_output,
    register_reward,
)
from agpo_trainer.rewards.custom import CustomRewardFunction, load_reward_function
from agpo_trainer.rewards.length import (
    LENGTH_REWARDS,
    agpo_length_reward,
    compute_length_reward,
    kimi_length_reward,
    overlong_penalty,
    register_length_reward,
)
from agpo_trainer.rewards.scoring import (
    combine_rewards,
    get_reward_function,
    judge,
    score,
)

__all__ = [
    "LENGTH_REWARDS",
    "REWARD_FUNCTIONS",
    "CustomRewardFunction",
    "RewardFn",
    "RewardFunctionError",
    "accuracy_reward",
    "agpo_length_reward",
    "answer_is_correct",
    "call_reward_function",
    "check_reward_output",
    "combine_rewards",
    "compute_length_reward",
    "extract_answer",
    "format_reward",
    "get_reward_function",
    "judge",
    "kimi_length_reward",
    "load_reward_function",
    "normalize_answer",
    "overlong_penalty",
    "reference_answer",
    "register_length_reward",
    "register_reward",
    "score",
]
