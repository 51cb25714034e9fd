"""Accuracy/format rewards, custom reward loading, combination and ``score``."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from agpo_trainer.rewards import (
    REWARD_FUNCTIONS,
    RewardFunctionError,
    accuracy_reward,
    call_reward_function,
    combine_rewards,
    extract_answer,
    format_reward,
    get_reward_function,
    load_reward_function,
    reference_answer,
    score,
)

from agpo_testlib import resolved_spec


def _has_math_verify() -> bool:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


math_verify_required = pytest.mark.skipif(
    not _has_math_verify(), reason="needs math-verify (pip install math-verify)"
)


def acc(completion: str, answer: str) -> float:
    return accuracy_reward(["q"], [completion], [answer])[0]


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "completion,expected",
    [
        (r"so the result is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"first \boxed{1}, then corrected: \boxed{2}", "2"),
        (r"\fbox{x^{2}+1}", "x^{2}+1"),
        ("work...\nAnswer: 17", "17"),
        ("work...\n**Final Answer:** $3\\pi$.", "3\\pi"),
        ("answer: first\nAnswer: second", "second"),
        ("no final answer here", None),
        ("7", "7"),
        (" -3.5\n", "-3.5"),
        (r"\boxed{unbalanced", None),
        (r"\boxed{}", None),
    ],
)
def test_extract_answer(completion: str, expected: str | None) -> None:
    assert extract_answer(completion) == expected


def test_reference_answer_forms() -> None:
    assert reference_answer("Natalia sold 48 ...\n#### 72") == "72"
    assert reference_answer(r"$\boxed{\sqrt{2}}$") == r"\sqrt{2}"
    assert reference_answer(" 5 ") == "5"


# ----------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    "completion,answer,expected",
    [
        (r"\boxed{42}", "42", 1.0),
        (r"\boxed{42.0}", "42", 1.0),
        ("Answer: 1,000", "1000", 1.0),
        (r"\boxed{43}", "42", 0.0),
        ("I think it's 42", "42", 0.0),  # no extractable answer
        ("Answer: Paris", "paris", 1.0),  # plain text, exact match (case-insensitive)
        ("Answer: Sirap", "Paris", 0.0),  # math-verify would see P*a*r*i*s == s*i*r*a*P
        (r"\boxed{\text{Paris}}", "Paris", 1.0),
        ("Answer: 72", "blah\n#### 72", 1.0),
    ],
)
def test_accuracy_exact_and_plain(completion: str, answer: str, expected: float) -> None:
    assert acc(completion, answer) == expected


@math_verify_required
@pytest.mark.parametrize(
    "completion,answer,expected",
    [
        (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
        (r"\boxed{\frac12}", "1/2", 1.0),
        (r"\boxed{1+x}", "x+1", 1.0),
        (r"\boxed{2^{1/2}}", r"\sqrt{2}", 1.0),
        (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}", 0.0),
        (r"\boxed{x+2}", "x+1", 0.0),
    ],
)
def test_accuracy_math_verify(completion: str, answer: str, expected: float) -> None:
    assert acc(completion, answer) == expected


def test_accuracy_batch_all_correct_all_wrong() -> None:
    completions = [r"\boxed{4}", "Answer: 4", r"\boxed{5}", "none"]
    assert accuracy_reward(["q"] * 4, completions, ["4"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert accuracy_reward(["q"] * 2, [r"\boxed{4}"] * 2, ["4"] * 2) == [1.0, 1.0]
    assert accuracy_reward(["q"] * 2, [r"\boxed{3}"] * 2, ["4"] * 2) == [0.0, 0.0]


def test_format_reward() -> None:
    completions = [r"\boxed{4}", "Answer: anything", "just text", r"\boxed{"]
    assert format_reward(["q"] * 4, completions, ["4"] * 4) == [1.0, 1.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- registry


def test_named_rewards_registry() -> None:
    assert {"accuracy", "format"} <= set(REWARD_FUNCTIONS.names())
    assert get_reward_function("accuracy") is accuracy_reward
    with pytest.raises(ValueError, match=r"unknown reward function 'acc'.*accuracy, format"):
        get_reward_function("acc")


# ----------------------------------------------------------------------------- custom


@pytest.fixture
def reward_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "agpo_test_custom_rewards"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            def length_reward(prompts, completions, answers):
                return [float(len(c)) for c in completions]

            def too_short(prompts, completions, answers):
                return [1.0]

            def wrong_type(prompts, completions, answers):
                return {"a": 1.0}

            def strings(prompts, completions, answers):
                return ["1.0" for _ in completions]

            def nan(prompts, completions, answers):
                return [float("nan") for _ in completions]

            def boom(prompts, completions, answers):
                raise ZeroDivisionError("bad\\nthing")

            class Scorer:
                @staticmethod
                def score(prompts, completions, answers):
                    return [2.0] * len(completions)

            NOT_CALLABLE = 3
            """
        )
    )
    (tmp_path / "agpo_test_broken_module.py").write_text(
        "raise RuntimeError('broken\\nat import')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in (name, "agpo_test_broken_module"):
        sys.modules.pop(mod, None)


def _one_line_error(spec: str, *args: list[str]) -> str:
    with pytest.raises(RewardFunctionError) as info:
        fn = load_reward_function(spec)
        if args:
            fn(*args)
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, ValueError)
    return message


def test_custom_reward_loads_and_runs(reward_module: str) -> None:
    fn = load_reward_function(f"{reward_module}:length_reward")
    assert fn(["p", "p"], ["ab", "abcd"], ["x", "x"]) == [2.0, 4.0]
    scorer = load_reward_function(f"{reward_module}:Scorer.score")
    assert scorer(["p"], ["c"], ["a"]) == [2.0]
    assert get_reward_function(f"{reward_module}:length_reward")(["p"], ["abc"], ["a"]) == [3.0]


def test_custom_reward_load_errors(reward_module: str) -> None:
    assert "cannot import module 'no_such_module_xyz'" in _one_line_error("no_such_module_xyz:f")
    assert "RuntimeError: broken at import" in _one_line_error("agpo_test_broken_module:f")
    assert "has no attribute 'missing'" in _one_line_error(f"{reward_module}:missing")
    assert "is not callable" in _one_line_error(f"{reward_module}:NOT_CALLABLE")
    assert "expected 'module:callable'" in _one_line_error("no_colon")
    assert "expected 'module:callable'" in _one_line_error(":f")


def test_custom_reward_output_errors(reward_module: str) -> None:
    args = (["p", "p"], ["a", "b"], ["x", "x"])
    msg = _one_line_error(f"{reward_module}:too_short", *args)
    assert "returned 1 values for 2 completions" in msg
    assert "got dict" in _one_line_error(f"{reward_module}:wrong_type", *args)
    assert "returned a str at index 0" in _one_line_error(f"{reward_module}:strings", *args)
    assert "non-finite" in _one_line_error(f"{reward_module}:nan", *args)
    assert "raised ZeroDivisionError: bad thing" in _one_line_error(f"{reward_module}:boom", *args)


def test_call_reward_function_accepts_tensors() -> None:
    def fn(prompts: list[str], completions: list[str], answers: list[str]) -> torch.Tensor:
        return torch.ones(len(completions))

    assert call_reward_function(fn, ["p"] * 2, ["a", "b"], ["x"] * 2) == [1.0, 1.0]

    def fn2(prompts: list[str], completions: list[str], answers: list[str]) -> torch.Tensor:
        return torch.ones(len(completions), 1)

    with pytest.raises(RewardFunctionError, match="shape"):
        call_reward_function(fn2, ["p"] * 2, ["a", "b"], ["x"] * 2)


# ----------------------------------------------------------------------------- combination


def test_combine_rewards_hand_computed() -> None:
    components = {
        "accuracy": torch.tensor([1.0, 0.0, 1.0]),
        "format": torch.tensor([1.0, 1.0, 0.0]),
        "length": torch.tensor([0.1, 0.0, 0.05]),
    }
    total = combine_rewards(components, {"accuracy": 1.0, "format": 0.5})
    torch.testing.assert_close(total, torch.tensor([1.6, 0.5, 1.05]))
    with pytest.raises(ValueError, match="unknown reward components"):
        combine_rewards(components, {"acuracy": 1.0})
    with pytest.raises(ValueError, match="same length"):
        combine_rewards({"a": torch.zeros(2), "b": torch.zeros(3)}, {})


def algo(
    rewards: Sequence[tuple[str, float]] = (("accuracy", 1.0),),
    length: dict[str, Any] | None = None,
) -> Any:
    """A resolved ``spec.algorithm`` with these builtin rewards and length reward."""
    return resolved_spec(
        {
            "spec.algorithm.rewards": [{"name": n, "weight": w} for n, w in rewards],
            "spec.algorithm.lengthReward": length or {"type": "none"},
        }
    ).algorithm


def test_the_resolved_reward_range_sums_the_weighted_bounds() -> None:
    assert algo().reward_range == (0.0, 1.0)
    assert algo((("accuracy", 1.0), ("format", 0.5))).reward_range == (0.0, 1.5)
    assert algo((("format", -1.0),)).reward_range == (-1.0, 0.0)
    custom = resolved_spec(
        {
            "spec.algorithm.rewards": [{"function": "mod:fn"}],
            "spec.algorithm.zeroVariance": "keep",
            "spec.algorithm.correct": {"reward": "mod:fn"},
        }
    )
    assert custom.algorithm.reward_range is None


def test_score_with_agpo_length_reward() -> None:
    completions = [r"\boxed{4}", r"\boxed{4}", r"\boxed{5}", "no answer"] + [r"\boxed{4}"] * 2
    total, components, correct = score(
        ["q"] * 6,
        completions,
        ["4"] * 6,
        [10, 40, 20, 30, 5, 9],
        2,
        algo((("accuracy", 1.0), ("format", 0.5)), {"type": "agpo", "coefficient": 0.1}),
        finished=[True] * 6,
    )
    # group 0: both correct (homogeneous) -> no length bonus; group 1: one correct -> full 0.1;
    # group 2: both correct -> 0
    assert correct.tolist() == [True, True, False, False, True, True]
    torch.testing.assert_close(components["length"], torch.tensor([0, 0, 0, 0, 0, 0.0]))
    torch.testing.assert_close(total, torch.tensor([1.5, 1.5, 0.5, 0.0, 1.5, 1.5]))
    assert set(components) == {"accuracy", "format", "length"}

    total, components, _ = score(
        ["q"] * 4, completions[:4], ["4"] * 4, torch.tensor([10, 40, 20, 30]), 4, algo(),
        finished=[True] * 4,
    )  # fmt: skip
    torch.testing.assert_close(total, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert set(components) == {"accuracy"}


def test_score_mixed_group_length_bonus_and_overlong() -> None:
    completions = [r"\boxed{4}", r"\boxed{4}", r"\boxed{5}", r"\boxed{4}"]
    total, components, _ = score(
        ["q"] * 4,
        completions,
        ["4"] * 4,
        [10, 40, 20, 25],
        4,
        algo(length={"type": "agpo", "coefficient": 0.1}),
        finished=[True] * 4,
    )
    # correct lengths 10, 40, 25: L_min 10, L_max 40
    expected_len = [0.1, 0.1 * (1 - 30 / (30 + 1e-6)), 0.0, 0.1 * (1 - 15 / (30 + 1e-6))]
    torch.testing.assert_close(components["length"], torch.tensor(expected_len))
    torch.testing.assert_close(total, torch.tensor([1.1, 1.0, 0.0, 1.05]))

    total, components, _ = score(
        ["q"] * 4,
        completions,
        ["4"] * 4,
        [10, 40, 20, 35],
        4,
        algo(length={"type": "overlong", "coefficient": 1.0, "maxTokens": 40, "bufferTokens": 10}),
        finished=[True] * 4,
    )
    torch.testing.assert_close(components["length"], torch.tensor([0.0, -1.0, 0.0, -0.5]))


def test_score_without_accuracy_still_reports_correct() -> None:
    total, components, correct = score(
        ["q"] * 2, [r"\boxed{4}", "x"], ["4", "4"], [1, 2], 2, algo((("format", 1.0),)),
        finished=[True] * 2,
    )  # fmt: skip
    assert correct.tolist() == [True, False]
    assert set(components) == {"format"}
    torch.testing.assert_close(total, torch.tensor([1.0, 0.0]))


def test_score_errors() -> None:
    with pytest.raises(ValueError, match="same length"):
        score(["q"], ["a", "b"], ["x", "y"], [1, 2], 2, algo(), finished=[True] * 2)
    with pytest.raises(ValueError, match="groups"):
        score(["q"] * 3, ["a"] * 3, ["x"] * 3, [1, 2, 3], 2, algo(), finished=[True] * 3)
    with pytest.raises(ValueError, match="unique"):
        score(
            ["q"] * 2, ["a"] * 2, ["x"] * 2, [1, 2], 2, algo((("format", 1), ("format", 2))),
            finished=[True] * 2,
        )  # fmt: skip
