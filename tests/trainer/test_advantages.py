"""Advantage estimators with hand-computed numbers (GRPO, AGPO v1, Dr. GRPO)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from agpo_api.catalog import ADVANTAGES, EstimatorTraits
from agpo_trainer.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AdvantageOptions,
    apply_zero_variance,
    compute_advantages,
    compute_advantages_and_mask,
    get_advantage_estimator,
    homogeneous_groups,
    register_advantage_estimator,
)
from agpo_trainer.experience import groups_with_variance

EPS = 1e-4
ACCURACY_RANGE = (0.0, 1.0)


def t(values: Sequence[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def close(actual: torch.Tensor, expected: Sequence[float], atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual.float(), t(expected), atol=atol, rtol=0)


def agpo_advantages(
    rewards: torch.Tensor,
    g: int,
    reward_range: tuple[float, float] = ACCURACY_RANGE,
    zero_variance_value: float = 1.0,
) -> torch.Tensor:
    """AGPO v1: GRPO advantages plus the agpo zero-variance policy (spec preset agpo), with
    the attainable range of the accuracy reward unless another is given."""
    options = AdvantageOptions(reward_range=reward_range, zero_variance_value=zero_variance_value)
    adv, _ = compute_advantages_and_mask(
        rewards, g, advantage="grpo", zero_variance="agpo", options=options
    )
    return adv


# ----------------------------------------------------------------------------- GRPO


def test_grpo_group_of_two() -> None:
    # mean 0.5, unbiased std sqrt((0.25 + 0.25) / 1) = sqrt(0.5)
    a = 0.5 / (math.sqrt(0.5) + EPS)
    close(compute_advantages(t([1, 0]), 2, "grpo"), [a, -a])


def test_grpo_two_of_four_correct() -> None:
    # mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735
    a = 0.5 / (math.sqrt(1 / 3) + EPS)
    close(compute_advantages(t([1, 0, 0, 1]), 4, "grpo"), [a, -a, -a, a])


def test_grpo_single_correct_of_four() -> None:
    # mean 0.25; deviations 0.75 / -0.25; unbiased var (0.5625 + 3 * 0.0625) / 3 = 0.25
    up, down = 0.75 / (0.5 + EPS), -0.25 / (0.5 + EPS)
    close(compute_advantages(t([0, 1, 0, 0]), 4, "grpo"), [down, up, down, down])
    assert up == pytest.approx(1.49970006, abs=1e-7)


def test_grpo_single_correct_of_sixteen() -> None:
    # mean 1/16; var = (15 * (1/16)^2 + (15/16)^2) / 15 = 1/16 -> std 0.25
    rewards = t([0.0] * 16)
    rewards[5] = 1.0
    expected = [-(1 / 16) / (0.25 + EPS)] * 16
    expected[5] = (15 / 16) / (0.25 + EPS)
    close(compute_advantages(rewards, 16, "grpo"), expected)
    assert expected[5] == pytest.approx(3.7485006, abs=1e-6)


def test_grpo_homogeneous_groups_are_exactly_zero() -> None:
    rewards = t([1, 1, 1, 1, 0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5])
    adv = compute_advantages(rewards, 4, "grpo")
    assert torch.equal(adv, torch.zeros(12))


def test_grpo_rounding_in_homogeneous_group_gives_exact_zero() -> None:
    # 0.1 + 0.2 != 0.3 in floating point; the float mean would leave a ~1e-5 advantage.
    rewards = torch.tensor([0.1 + 0.2, 0.3, 0.3], dtype=torch.float64)
    assert torch.equal(compute_advantages(rewards, 3, "grpo"), torch.zeros(3, dtype=torch.float64))


def test_grpo_multiple_groups_are_independent() -> None:
    a = 0.5 / (math.sqrt(0.5) + EPS)
    rewards = t([1, 0, 0, 0, 0, 1, 1, 1])
    close(compute_advantages(rewards, 2, "grpo"), [a, -a, 0, 0, -a, a, 0, 0])


# ----------------------------------------------------------------------------- AGPO


def test_agpo_all_correct_all_wrong_intermediate() -> None:
    rewards = t([1, 1, 1, 1, 0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5])
    close(agpo_advantages(rewards, 4), [1] * 4 + [-1] * 4 + [0] * 4)


def test_agpo_equals_grpo_on_mixed_groups() -> None:
    up, down = 0.75 / (0.5 + EPS), -0.25 / (0.5 + EPS)
    close(agpo_advantages(t([0, 1, 0, 0]), 4), [down, up, down, down])


def test_agpo_group_of_two_and_sixteen() -> None:
    close(agpo_advantages(t([1, 1, 0, 0]), 2), [1, 1, -1, -1])
    close(agpo_advantages(t([1.0] * 16 + [0.0] * 16), 16), [1] * 16 + [-1] * 16)


def test_agpo_magnitude_and_explicit_bounds() -> None:
    # Authors' code uses +1 / -1 base rewards: min_reward=-1.
    rewards = t([1, 1, -1, -1, 0, 0])
    adv = agpo_advantages(rewards, 2, reward_range=(-1, 1))
    close(adv, [1, 1, -1, -1, 0, 0])
    adv = agpo_advantages(t([2.5, 2.5, -1, -1]), 2, reward_range=(-1, 2.5), zero_variance_value=0.3)
    close(adv, [0.3, 0.3, -0.3, -0.3])


def test_agpo_compares_with_the_given_range() -> None:
    # The accuracy range [0, 1]: a homogeneous group at 2.0 is at neither end -> 0.
    close(agpo_advantages(t([2, 2]), 2), [0, 0])


def test_agpo_without_a_reward_range_refuses_to_guess() -> None:
    # A part that reads the range declares it (catalog trait); none is assumed.
    with pytest.raises(ValueError, match="attainable reward range is unknown"):
        compute_advantages_and_mask(t([1, 1]), 2, advantage="grpo", zero_variance="agpo")


def test_agpo_min_above_max_rejected() -> None:
    with pytest.raises(ValueError, match="min_reward"):
        agpo_advantages(t([1, 1]), 2, reward_range=(1, 0))


# ----------------------------------------------------------------------------- Dr. GRPO


def test_dr_grpo_numbers() -> None:
    close(compute_advantages(t([0, 1, 0, 0]), 4, "dr_grpo"), [-0.25, 0.75, -0.25, -0.25])
    close(compute_advantages(t([1, 0]), 2, "dr_grpo"), [0.5, -0.5])
    rewards = t([1, 1, 0, 0, 0.5, 0.5])
    close(compute_advantages(rewards, 2, "dr_grpo"), [0] * 6)
    sixteen = t([0.0] * 16)
    sixteen[0] = 1.0
    close(compute_advantages(sixteen, 16, "dr_grpo"), [15 / 16] + [-1 / 16] * 15)


# ----------------------------------------------------------------------------- zero variance


def test_homogeneous_groups() -> None:
    rewards = t([1, 1, 0, 1, 0.5, 0.5, 0, 0])
    same = homogeneous_groups(rewards, 2)
    assert same.tolist() == [True, False, True, True]
    assert same.dtype == torch.bool


def test_homogeneous_groups_tolerance() -> None:
    rewards = torch.tensor([0.1 + 0.2, 0.3, 1.0, 1.0 + 1e-3], dtype=torch.float64)
    assert homogeneous_groups(rewards, 2).tolist() == [True, False]
    # The tolerance scales with the magnitude: 1e6 and 1e6 + 0.5 are equal within 1e-6 * 1e6.
    big = torch.tensor([1e6, 1e6 + 0.5], dtype=torch.float64)
    assert homogeneous_groups(big, 2).tolist() == [True]


def test_one_zero_variance_predicate_for_rewards_above_one() -> None:
    # A spread of 1.5e-6 at rewards of 2 is within the relative tolerance (2e-6). DAPO's
    # resampling used an absolute 1e-6 and called this group varied while the loss masked
    # it; now every consumer asks the same predicate.
    rewards = torch.tensor([2.0, 2.0 + 1.5e-6, 3.0, 0.0], dtype=torch.float64)
    assert homogeneous_groups(rewards, 2).tolist() == [True, False]
    assert groups_with_variance(rewards, 2) == [1]  # resampling keeps only group 1
    adv = compute_advantages(rewards, 2, "grpo")
    _, keep = apply_zero_variance(adv, rewards, 2, "mask")
    assert keep.tolist() == [False, False, True, True]  # the loss masks group 0 alone


def test_apply_zero_variance_modes() -> None:
    rewards = t([1, 1, 1, 0, 0, 0])
    adv = compute_advantages(rewards, 2, "grpo")
    a = 0.5 / (math.sqrt(0.5) + EPS)
    out, keep = apply_zero_variance(adv, rewards, 2, "keep")
    close(out, [0, 0, a, -a, 0, 0])
    assert keep.all()
    out, keep = apply_zero_variance(
        adv, rewards, 2, "agpo", options=AdvantageOptions(reward_range=ACCURACY_RANGE)
    )
    close(out, [1, 1, a, -a, -1, -1])
    assert keep.all()
    for mode in ("mask", "resample"):
        out, keep = apply_zero_variance(adv, rewards, 2, mode)
        close(out, [0, 0, a, -a, 0, 0])
        assert keep.tolist() == [False, False, True, True, False, False]


def test_compute_advantages_and_mask_spec_combinations() -> None:
    rewards = t([1, 1, 0, 0])
    accuracy = AdvantageOptions(reward_range=ACCURACY_RANGE)
    adv, keep = compute_advantages_and_mask(
        rewards, 2, advantage="dr_grpo", zero_variance="agpo", options=accuracy
    )
    close(adv, [1, 1, -1, -1])
    assert keep.all()
    adv, keep = compute_advantages_and_mask(rewards, 2, advantage="grpo", zero_variance="mask")
    close(adv, [0, 0, 0, 0])
    assert not keep.any()
    # zeroVariance alone decides homogeneous groups: keep -> advantage 0 (spec docs).
    adv, keep = compute_advantages_and_mask(rewards, 2, advantage="grpo", zero_variance="keep")
    close(adv, [0, 0, 0, 0])
    assert keep.all()
    adv, _ = compute_advantages_and_mask(
        rewards, 2, advantage="grpo", zero_variance="agpo", options=accuracy
    )
    close(adv, [1, 1, -1, -1])


def test_unknown_zero_variance_mode() -> None:
    with pytest.raises(ValueError, match=r"unknown zeroVariance mode 'drop'.*agpo, keep, mask"):
        apply_zero_variance(t([1, 0]), t([1, 0]), 2, "drop")


# ----------------------------------------------------------------------------- registry/errors


def test_unknown_estimator_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo'.*dr_grpo, grpo"):
        compute_advantages(t([1, 0]), 2, "ppo")
    with pytest.raises(ValueError, match="valid names"):
        get_advantage_estimator("GRPO")


def test_registry_contains_builtins_and_accepts_new_estimator() -> None:
    assert set(ADVANTAGE_ESTIMATORS.names()) == {"grpo", "dr_grpo", "reinforce"}

    def _double(grouped, homogeneous, options):  # type: ignore[no-untyped-def]
        return 2 * (grouped - grouped.mean(-1, keepdim=True))

    with ADVANTAGE_ESTIMATORS.scope():  # test-local: gone from registry and catalog after
        register_advantage_estimator("centred_times_two", traits=EstimatorTraits())(_double)
        close(compute_advantages(t([1, 0]), 2, "centred_times_two"), [1, -1])
        assert "centred_times_two" in ADVANTAGES  # a spec may name it now
        with pytest.raises(ValueError, match="already registered"):
            register_advantage_estimator("grpo")(_double)
        with pytest.raises(ValueError, match="is new: register it with traits"):
            register_advantage_estimator("no_traits")(_double)
    assert "centred_times_two" not in ADVANTAGE_ESTIMATORS
    assert "centred_times_two" not in ADVANTAGES


@pytest.mark.parametrize("n,g", [(5, 2), (6, 4), (3, 0)])
def test_group_size_must_divide(n: int, g: int) -> None:
    with pytest.raises(ValueError):
        compute_advantages(torch.zeros(n), g, "grpo")


def test_rewards_must_be_1d() -> None:
    with pytest.raises(ValueError, match="1-D"):
        compute_advantages(torch.zeros(2, 2), 2, "grpo")


# ----------------------------------------------------------------------------- dtypes/devices


@pytest.mark.parametrize("estimator", ["grpo", "reinforce", "dr_grpo"])
def test_bfloat16_in_bfloat16_out(estimator: str) -> None:
    rewards = t([1, 0, 0, 0, 1, 1, 1, 1])
    ref = compute_advantages(rewards, 4, estimator)
    out = compute_advantages(rewards.bfloat16(), 4, estimator)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)


def test_integer_rewards_give_float32_and_detached() -> None:
    out = agpo_advantages(torch.tensor([1, 0, 1, 1]), 2)
    assert out.dtype == torch.float32
    rewards = t([1, 0]).requires_grad_()
    assert not compute_advantages(rewards, 2, "grpo").requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_respected() -> None:
    rewards = t([1, 0, 1, 1]).cuda()
    out = agpo_advantages(rewards, 2)
    assert out.device == rewards.device
    close(out.cpu(), agpo_advantages(rewards.cpu(), 2).tolist())
