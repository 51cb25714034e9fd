"""``algorithm.lengthReward.scope`` and ``.target`` from the spec to the rewards and the
advantages: the trainer's own helpers (``experience``) on real completions and the builtin
byte-level tokenizer."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from agpo_api import parse_job
from agpo_api.resolved import ResolvedSpec, resolve
from agpo_trainer.algorithms import advantages_of
from agpo_trainer.experience import length_values
from agpo_trainer.models.tiny import build_tokenizer
from agpo_trainer.rewards import score
from agpo_trainer.tasks import bitcount

from agpo_testlib import MINIMAL


def spec(length_reward: dict[str, Any], group_size: int = 8, **sections: Any) -> ResolvedSpec:
    doc = copy.deepcopy(MINIMAL)
    doc["spec"]["algorithm"] = {
        "preset": "agpo", "lengthReward": length_reward, "groupSize": group_size
    }  # fmt: skip
    doc["spec"].update(sections)
    return resolve(parse_job(doc).spec)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer()


def rewards_of(s: ResolvedSpec, tok: Any, prompts: list[str], texts: list[str], answers: list[str],
               g: int) -> torch.Tensor:  # fmt: skip
    total, _, _ = score(
        prompts, texts, answers, [len(tok.encode(t, add_special_tokens=False)) for t in texts],
        g, s.algorithm, length_values=length_values(s, tok, texts), finished=[True] * len(texts),
    )  # fmt: skip
    return total


def test_scope_all_gives_brevity_pressure_in_all_correct_groups_and_keeps_agpo_plus_one(
    tokenizer: Any,
) -> None:
    prompt = "a1b0c1="  # two 1s
    groups = [
        ["Answer:2", "......Answer:2"],  # all correct, lengths differ
        ["Answer:2", "Answer:2"],  # all correct, equal lengths
        ["Answer:3", "..Answer:1"],  # all wrong
    ]
    texts = [t for grp in groups for t in grp]
    n = len(texts)
    for scope, top in (("mixed", 1.0), ("all", 1.1)):
        s = spec({"type": "agpo", "coefficient": 0.1, "scope": scope}, group_size=2)
        # what the +1 rule compares with
        assert s.algorithm.reward_range == pytest.approx((0.0, top))
        rewards = rewards_of(s, tokenizer, [prompt] * n, texts, ["2"] * n, 2)
        adv, _ = advantages_of(rewards, s.algorithm)
        if scope == "mixed":
            # the paper: an all-correct group is +1 whatever its lengths; all-wrong -1
            assert rewards.tolist() == pytest.approx([1, 1, 1, 1, 0, 0])
            assert adv.tolist() == pytest.approx([1, 1, 1, 1, -1, -1])
        else:
            # the shorter correct answer now beats the longer one; a tie stays AGPO's +1;
            # all-wrong groups get no bonus and stay -1
            assert rewards.tolist() == pytest.approx([1.1, 1.0, 1.1, 1.1, 0, 0])
            assert adv[0] > 0 > adv[1]
            assert adv[2:].tolist() == pytest.approx([1, 1, -1, -1])


def test_target_reasoning_ranks_by_the_tokens_before_the_answer(tokenizer: Any) -> None:
    # A thinks briefly and then writes a long answer; B thinks long and answers in one line.
    a = "ok</think>so, after checking every step twice, the result is \\boxed{2}"
    b = "1+1 is 2, check: 2-1=1</think>\\boxed{2}"
    texts, answers = [a, b, "\\boxed{5}", "\\boxed{7}"], ["2"] * 4  # a mixed group
    assert len(a) > len(b)
    by_completion = rewards_of(
        spec({"type": "agpo", "target": "completion"}), tokenizer, ["q"] * 4, texts, answers, 4
    )
    by_reasoning = rewards_of(
        spec({"type": "agpo", "target": "reasoning"}), tokenizer, ["q"] * 4, texts, answers, 4
    )
    assert by_completion[1] > by_completion[0]  # B is the shorter completion
    assert by_reasoning[0] > by_reasoning[1]  # A has the shorter reasoning
    assert by_reasoning.tolist() == pytest.approx([1.1, 1.0, 0.0, 0.0])


def test_reasoning_lengths_follow_the_answer_marker_and_match_the_task_grader(
    tokenizer: Any,
) -> None:
    reasoning = spec({"type": "agpo", "target": "reasoning"})
    # no evaluation section: the default marker
    assert reasoning.algorithm.answer_marker == "Answer:"
    bits = "10110"
    texts = bitcount.all_formats(bits)  # every filler length, with and without scratch
    grades = [bitcount.grade(bitcount.make_prompt(bits), t) for t in texts]
    assert length_values(reasoning, tokenizer, texts) == [g.reasoning_tokens for g in grades]
    marked = spec(
        {"type": "agpo", "target": "reasoning"},
        dataset={"source": {"builtin": {"task": "bitcount"}}},
        evaluation={"answerMarker": "####"},
    )
    assert length_values(marked, tokenizer, ["abc#### 4", "#### 4"]) == [3, 0]
    # target completion leaves the completion lengths to score()
    assert length_values(spec({"type": "agpo"}), tokenizer, texts) is None
