"""The spec and the registries name the same things; custom rewards give AGPO their range and
decide "correct" when the spec says so."""

from __future__ import annotations

import copy
import typing

import torch

from agpo_api import parse_job
from agpo_api.models import (
    PRESETS,
    AdvantageName,
    LengthRewardName,
    LossAggregationName,
    PolicyLossName,
    ZeroVarianceName,
)
from agpo_trainer.algorithms import (
    ADVANTAGE_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    ZERO_VARIANCE_MODES,
    ZERO_VARIANCE_POLICIES,
    compute_advantages_and_mask,
)
from agpo_trainer.experience import correct_rule, length_reward_args, reward_range
from agpo_trainer.rewards import LENGTH_REWARDS, score

from agpo_testlib import MINIMAL


def names(literal: object) -> set[str]:
    return set(typing.get_args(literal))


def test_every_spec_name_is_registered_and_every_registered_name_reachable() -> None:
    pairs = [
        (AdvantageName, ADVANTAGE_ESTIMATORS.names()),
        (ZeroVarianceName, ZERO_VARIANCE_POLICIES.names()),
        (PolicyLossName, POLICY_LOSSES.names()),
        (LossAggregationName, LOSS_AGGREGATIONS.names()),
        (LengthRewardName, LENGTH_REWARDS.names()),
    ]
    for literal, registered in pairs:
        # names other tests register on the fly start with test_
        assert names(literal) == {n for n in registered if not n.startswith("test_")}
    assert set(ZERO_VARIANCE_MODES) == names(ZeroVarianceName)
    for table in PRESETS.values():
        assert table["advantage"] in ADVANTAGE_ESTIMATORS
        assert table["zeroVariance"] in ZERO_VARIANCE_POLICIES
        assert table["policyLoss"] in POLICY_LOSSES
        assert table["lossAggregation"] in LOSS_AGGREGATIONS
        assert table["lengthReward"]["type"] in LENGTH_REWARDS


def _spec(patch: dict[str, object]):  # type: ignore[no-untyped-def]
    doc = copy.deepcopy(MINIMAL)
    for dotted, value in patch.items():
        node = doc
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return parse_job(doc).spec


def test_custom_reward_agpo_uses_the_declared_range() -> None:
    spec = _spec(
        {
            "spec.algorithm.rewards": [
                {
                    "function": "my_rewards:score",
                    "weight": 2.0,
                    "bounds": {"min": -1.0, "max": 1.0},
                },
                {"name": "format", "weight": 0.5},
            ],
            "spec.algorithm.correct": {"reward": "my_rewards:score", "threshold": 0.0},
        }
    )
    lo, hi = reward_range(spec)  # type: ignore[misc]
    assert (lo, hi) == (-2.0, 2.5)
    # a group at the top of the declared range gets +1, at the bottom -1; not the [0, 1] guess
    rewards = torch.tensor([2.5, 2.5, -2.0, -2.0, 1.0, 1.0])
    adv, keep = compute_advantages_and_mask(
        rewards, 2, advantage="grpo", zero_variance="agpo", max_reward=hi, min_reward=lo
    )
    assert adv.tolist() == [1.0, 1.0, -1.0, -1.0, 0.0, 0.0] and bool(keep.all())


def test_custom_reward_decides_correct(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "judge_mod.py").write_text(
        "def judge(prompts, completions, answers):\n"
        "    return [1.0 if c == 'yes' else -1.0 for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = _spec(
        {
            "spec.algorithm.rewards": [
                {"function": "judge_mod:judge", "bounds": {"min": -1.0, "max": 1.0}}
            ],
            "spec.algorithm.correct": {"reward": "judge_mod:judge", "threshold": 0.0},
        }
    )
    assert correct_rule(spec) == ("judge_mod:judge", 0.0)
    total, _, correct = score(
        ["p"] * 2, ["yes", "no"], ["7", "7"], [3, 2], 2,
        rewards=[("judge_mod:judge", 1.0)], length_reward=length_reward_args(spec),
        correct=correct_rule(spec),
    )  # fmt: skip
    assert correct.tolist() == [True, False]  # not math accuracy (neither answer is "7")
    # the AGPO length bonus goes to the (lone) correct answer
    torch.testing.assert_close(total, torch.tensor([1.1, -1.0]))


def test_dapo_overlong_buffer_defaults_to_a_fifth() -> None:
    spec = _spec({"spec.algorithm.preset": "dapo", "spec.training.maxCompletionTokens": 100})
    assert length_reward_args(spec) == ("overlong", 1.0, 100, 20)
