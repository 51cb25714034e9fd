"""AGPO / Kimi k1.5 / DAPO length rewards with hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from agpo_api.resolved import ResolvedLengthReward
from agpo_trainer.rewards import (
    LENGTH_REWARDS,
    agpo_length_reward,
    compute_length_reward,
    kimi_length_reward,
    overlong_penalty,
)


def L(values: list[int]) -> torch.Tensor:
    return torch.tensor(values)


def C(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


def close(actual: torch.Tensor, expected: list[float], atol: float = 1e-7) -> None:
    assert actual.dtype == torch.float32
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=0
    )


# ----------------------------------------------------------------------------- AGPO


def test_agpo_mixed_group() -> None:
    # correct lengths 10, 20, 40 -> L_min 10, L_max 40, denominator 30 + 1e-6
    out = agpo_length_reward(L([10, 20, 30, 40]), C([1, 1, 0, 1]), 4)
    close(out, [0.1, 0.1 * (1 - 10 / (30 + 1e-6)), 0.0, 0.1 * (1 - 30 / (30 + 1e-6))])
    assert out[1].item() == pytest.approx(0.0666667, abs=1e-7)
    assert 0 < out[3].item() < 1e-8  # the longest correct answer gets ~0, not exactly 0


def test_agpo_all_correct_and_all_wrong_get_zero() -> None:
    out = agpo_length_reward(L([10, 20, 30, 40, 5, 6, 7, 8]), C([1, 1, 1, 1, 0, 0, 0, 0]), 4)
    close(out, [0.0] * 8)


def test_agpo_single_correct_gets_full_coef() -> None:
    close(agpo_length_reward(L([100, 7, 3, 50]), C([0, 1, 0, 0]), 4, coef=0.2), [0, 0.2, 0, 0])


def test_agpo_ties_get_full_coef() -> None:
    # both correct answers have length 50: (L - L_min) = 0 -> full coef
    close(agpo_length_reward(L([50, 50, 10, 10]), C([1, 1, 0, 0]), 4), [0.1, 0.1, 0, 0])


def test_agpo_group_of_two() -> None:
    close(agpo_length_reward(L([7, 3, 4, 4]), C([1, 0, 0, 0]), 2), [0.1, 0, 0, 0])


def test_agpo_group_of_sixteen() -> None:
    lengths = list(range(100, 1700, 100))  # 100..1600
    correct = [i % 4 == 0 for i in range(16)]  # lengths 100, 500, 900, 1300 correct
    out = agpo_length_reward(L(lengths), torch.tensor(correct), 16)
    expected = [0.0] * 16
    for i, length in zip((0, 4, 8, 12), (100, 500, 900, 1300), strict=True):
        expected[i] = 0.1 * (1 - (length - 100) / (1200 + 1e-6))
    close(out, expected)
    assert out[4].item() == pytest.approx(0.1 * 2 / 3, abs=1e-7)


# ----------------------------------------------------------------------------- Kimi


def test_kimi_mixed_group() -> None:
    # L_min 10, L_max 40: lambda = 0.5 - (L - 10) / 30 = 0.5, 1/6, -1/6, -0.5
    out = kimi_length_reward(L([10, 20, 30, 40]), C([1, 1, 0, 0]), 4)
    close(out, [0.5, 1 / 6, -1 / 6, -0.5])


def test_kimi_short_wrong_answer_not_rewarded() -> None:
    # wrong answer is the shortest: lambda 0.5 -> min(0, 0.5) = 0; correct long one: -0.5
    close(kimi_length_reward(L([10, 40]), C([0, 1]), 2), [0.0, -0.5])


def test_kimi_all_correct_and_all_wrong() -> None:
    out = kimi_length_reward(L([10, 40, 10, 40]), C([1, 1, 0, 0]), 2, coef=0.2)
    close(out, [0.1, -0.1, 0.0, -0.1])


def test_kimi_equal_lengths_and_single_correct() -> None:
    close(kimi_length_reward(L([30, 30, 30]), C([1, 0, 0]), 3), [0, 0, 0])
    # lone correct answer in the middle: lambda = 0.5 - 10/20 = 0
    close(kimi_length_reward(L([10, 20, 30]), C([0, 1, 0]), 3), [0.0, 0.0, -0.5])


def test_kimi_group_of_sixteen() -> None:
    lengths = list(range(1, 17))  # L_min 1, L_max 16
    correct = [i < 8 for i in range(16)]
    out = kimi_length_reward(L(lengths), torch.tensor(correct), 16)
    expected = [
        (0.5 - (n - 1) / 15) if ok else min(0.0, 0.5 - (n - 1) / 15)
        for n, ok in zip(lengths, correct, strict=True)
    ]
    close(out, expected, atol=1e-6)


# ----------------------------------------------------------------------------- DAPO overlong


def test_overlong_penalty_pieces() -> None:
    # max 100, buffer 20: 0 up to 80, linear to -1 at 100, -1 beyond
    out = overlong_penalty(L([50, 80, 90, 95, 100, 150]), 100, 20)
    close(out, [0, 0, -0.5, -0.75, -1, -1])


def test_overlong_penalty_hard_cutoff_and_coef() -> None:
    close(overlong_penalty(L([100, 101]), 100, 0), [0, -1])
    close(overlong_penalty(L([90]), 100, 20, coef=0.5), [-0.25])


def test_agpo_scope_all_rewards_all_correct_groups_too_but_never_all_wrong_ones() -> None:
    # groups: all-correct (10, 20, 30, 40), all-wrong (5, 6, 7, 8), mixed (10, 20, -, 40)
    lengths = L([10, 20, 30, 40, 5, 6, 7, 8, 10, 20, 30, 40])
    correct = C([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 1])
    mixed = agpo_length_reward(lengths, correct, 4, scope="mixed")
    every = agpo_length_reward(lengths, correct, 4, scope="all")
    d = 30 + 1e-6
    bonus = [0.1, 0.1 * (1 - 10 / d), 0.1 * (1 - 20 / d), 0.1 * (1 - 30 / d)]
    in_mixed = [0.1, 0.1 * (1 - 10 / d), 0.0, 0.1 * (1 - 30 / d)]
    close(every, bonus + [0.0] * 4 + in_mixed)
    close(mixed, [0.0] * 8 + in_mixed)  # the paper's rule: all-correct groups get nothing
    # An all-correct group of equal lengths: a tie, the full bonus each (still homogeneous).
    close(agpo_length_reward(L([9, 9]), C([1, 1]), 2, scope="all"), [0.1, 0.1])


def test_agpo_scope_is_checked_and_reaches_the_dispatch() -> None:
    lengths, correct = L([10, 20]), C([1, 1])
    close(compute_length_reward(spec("agpo", scope="all"), lengths, correct, 2), [0.1, 0.0])
    close(compute_length_reward(spec("agpo"), lengths, correct, 2), [0.0, 0.0])
    with pytest.raises(ValueError, match="length reward scope 'some'; valid names: all, mixed"):
        agpo_length_reward(lengths, correct, 2, scope="some")


@pytest.mark.parametrize("max_tokens,buffer_tokens", [(0, 0), (100, -1), (100, 101)])
def test_overlong_penalty_rejects_bad_config(max_tokens: int, buffer_tokens: int) -> None:
    with pytest.raises(ValueError):
        overlong_penalty(L([1]), max_tokens, buffer_tokens)


# ----------------------------------------------------------------------------- dispatch & types


def spec(
    kind: str,
    coefficient: float = 0.1,
    max_tokens: int = 64,
    buffer_tokens: int | None = 10,
    scope: str = "mixed",
) -> ResolvedLengthReward:
    """A resolved ``lengthReward`` section, what a registered length reward receives."""
    return ResolvedLengthReward(kind, coefficient, max_tokens, buffer_tokens, scope, "completion")


def test_dispatch_by_spec_type() -> None:
    lengths, correct = L([10, 20]), C([1, 0])
    close(compute_length_reward(spec("none"), lengths, correct, 2), [0, 0])
    close(compute_length_reward(spec("agpo", 0.3), lengths, correct, 2), [0.3, 0])
    close(compute_length_reward(spec("kimi", 1.0), lengths, correct, 2), [0.5, -0.5])
    close(compute_length_reward(spec("overlong", 1.0, 20, 10), lengths, correct, 2), [0, -1])
    assert set(LENGTH_REWARDS.names()) == {"none", "agpo", "kimi", "overlong"}


def test_dispatch_errors() -> None:
    with pytest.raises(ValueError, match="agpo, kimi, none, overlong"):
        compute_length_reward(spec("dapo"), L([1, 2]), C([1, 0]), 2)
    with pytest.raises(ValueError, match="bufferTokens"):
        compute_length_reward(spec("overlong", buffer_tokens=None), L([1, 2]), C([1, 0]), 2)


def test_group_size_must_divide_and_shapes_match() -> None:
    with pytest.raises(ValueError, match="divisible"):
        agpo_length_reward(L([1, 2, 3]), C([1, 0, 1]), 2)
    with pytest.raises(ValueError, match="shape"):
        kimi_length_reward(L([1, 2]), C([1, 0, 1, 0]), 2)


def test_float_lengths_and_output_dtype() -> None:
    out = agpo_length_reward(torch.tensor([1.0, 3.0]), C([1, 0]), 2, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out[0].item() == pytest.approx(0.1, abs=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_respected() -> None:
    out = agpo_length_reward(L([10, 20]).cuda(), C([1, 1]).cuda(), 1)
    assert out.device.type == "cuda"
