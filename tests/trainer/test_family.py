"""The spec and the registries name the same things; custom rewards give AGPO their range and
decide "correct" when the spec says so."""

from __future__ import annotations

import torch

from agpo_api import catalog
from agpo_api.models import PRESETS
from agpo_trainer.algorithms import (
    ADVANTAGE_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    ZERO_VARIANCE_POLICIES,
    AdvantageOptions,
    compute_advantages_and_mask,
)
from agpo_trainer.rewards import LENGTH_REWARDS, REWARD_FUNCTIONS, score
from agpo_trainer.tasks import TASKS

from agpo_testlib import resolved_spec

#: Each trainer registry and the contract's catalog of the same names.
PAIRS = [
    (ADVANTAGE_ESTIMATORS, catalog.ADVANTAGES),
    (ZERO_VARIANCE_POLICIES, catalog.ZERO_VARIANCE),
    (POLICY_LOSSES, catalog.POLICY_LOSSES),
    (LOSS_AGGREGATIONS, catalog.LOSS_AGGREGATIONS),
    (LENGTH_REWARDS, catalog.LENGTH_REWARDS),
    (REWARD_FUNCTIONS, catalog.REWARDS),
    (TASKS, catalog.TASKS),
]


def test_every_spec_name_is_registered_with_the_contracts_traits() -> None:
    for registry, names in PAIRS:
        assert set(registry.names()) == set(names.names()), registry.kind
        for name in registry.names():
            assert registry.traits(name) == names.traits(name), name
    for table in PRESETS.values():
        assert table["advantage"] in ADVANTAGE_ESTIMATORS
        assert table["zeroVariance"] in ZERO_VARIANCE_POLICIES
        assert table["policyLoss"] in POLICY_LOSSES
        assert table["lossAggregation"] in LOSS_AGGREGATIONS
        assert table["lengthReward"]["type"] in LENGTH_REWARDS


def _spec(patch: dict[str, object]):  # type: ignore[no-untyped-def]
    return resolved_spec(patch)


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
    assert spec.algorithm.reward_range == (-2.0, 2.5)
    # a group at the top of the declared range gets +1, at the bottom -1; not the [0, 1] guess
    rewards = torch.tensor([2.5, 2.5, -2.0, -2.0, 1.0, 1.0])
    adv, keep = compute_advantages_and_mask(
        rewards, 2, advantage="grpo", zero_variance="agpo",
        options=AdvantageOptions.of(spec.algorithm),
    )  # fmt: skip
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
    algo = spec.algorithm
    assert (algo.correct_reward, algo.correct_threshold) == ("judge_mod:judge", 0.0)
    total, _, correct = score(
        ["p"] * 2, ["yes", "no"], ["7", "7"], [3, 2], 2, algo, finished=[True, True]
    )
    assert correct.tolist() == [True, False]  # not math accuracy (neither answer is "7")
    # the AGPO length bonus goes to the (lone) correct answer
    torch.testing.assert_close(total, torch.tensor([1.1, -1.0]))


def test_dapo_overlong_buffer_defaults_to_a_fifth() -> None:
    spec = _spec({"spec.algorithm.preset": "dapo", "spec.training.maxCompletionTokens": 100})
    lr = spec.algorithm.length_reward
    assert (lr.type, lr.coefficient, lr.max_tokens, lr.buffer_tokens) == ("overlong", 1.0, 100, 20)
