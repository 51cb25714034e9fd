"""The builtin chainsum task: prompts, answers, scratch, splits, grader, rows, warm-up."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from agpo_trainer.tasks import chainsum as cs
from agpo_trainer.tasks import get_task


@pytest.mark.parametrize(
    ("digits", "prompt", "answer", "scratch"),
    [
        ("3592", "a3b5c9d2=", "9", "a33b58c97d29"),
        ("00", "a0b0=", "0", "a00b00"),
        ("99999999", "a9b9c9d9e9f9g9h9=", "2", "a99b98c97d96e95f94g93h92"),
    ],
)
def test_prompt_answer_and_scratch(digits: str, prompt: str, answer: str, scratch: str) -> None:
    p = cs.Problem(digits)
    assert (p.prompt, p.answer, p.difficulty) == (prompt, answer, len(digits))
    assert cs.parse_prompt(prompt) == digits and cs.answer_of(prompt) == answer
    assert cs.scratch_for(digits) == scratch


@pytest.mark.parametrize("bad", ["3", "123456789", "3a", "", "٣٤"])
def test_make_prompt_rejects_bad_digits(bad: str) -> None:
    with pytest.raises(ValueError, match="digits must be 2-8"):
        cs.make_prompt(bad)


@pytest.mark.parametrize("bad", ["a3b5", "b3a5=", "a3b5c=", "a1b0c1d1e0f1g1h1i1="])
def test_parse_prompt_rejects_other_text(bad: str) -> None:
    with pytest.raises(ValueError):
        cs.parse_prompt(bad)


def test_splits_are_stable_disjoint_and_near_their_fractions() -> None:
    # all 10,000 four-operand prompts: each in exactly one split, fractions 0.4/0.4/0.1/0.1
    counts = Counter(cs.split_of(cs.make_prompt(f"{v:04d}")) for v in range(10_000))
    assert set(counts) == set(cs.SPLIT_NAMES)
    for name, frac in cs.SPLITS:
        assert abs(counts[name] / 10_000 - frac) < 0.02, (name, counts)
    assert cs.split_of("a3b5c9d2=") == cs.split_of("a3b5c9d2=")


def test_stratified_sets_stay_in_their_split_and_cover_every_length() -> None:
    ev = cs.stratified("eval", 30)
    te = cs.stratified("test", 30)
    assert {p.split for p in ev} == {"eval"} and {p.split for p in te} == {"test"}
    assert not {p.prompt for p in ev} & {p.prompt for p in te}
    by_len = Counter(p.difficulty for p in ev)
    assert set(by_len) == set(range(cs.MIN_OPS, cs.MAX_OPS + 1))
    assert by_len[2] < 30 and all(by_len[n] == 30 for n in range(3, 9))  # 2 operands: ~10 in all
    assert cs.stratified("eval", 30) == ev  # deterministic


def test_sampled_rows_are_seeded_length_uniform_and_in_the_train_split() -> None:
    rows = cs.sampled_rows("train", 700, seed=3)
    assert rows == cs.sampled_rows("train", 700, seed=3)
    assert {cs.split_of(r["prompt"]) for r in rows} == {"train"}
    lens = Counter(int(r["difficulty"]) for r in rows)
    assert all(60 <= lens[n] <= 140 for n in range(2, 9)), lens
    assert all(r["answer"] == cs.answer_of(r["prompt"]) for r in rows)


@pytest.mark.parametrize("digits", ["35", "3592", "99999999"])
def test_grader_accepts_every_emitted_format(digits: str) -> None:
    prompt = cs.make_prompt(digits)
    for scratch in (False, True):
        for filler in range(cs.MAX_FILLER + 1):
            text = cs.make_completion(digits, filler=filler, scratch=scratch)
            g = cs.grade(prompt, text)
            assert g.correct and g.well_formed and g.used_scratch == scratch
            assert g.filler_tokens == filler
            assert g.reasoning_tokens == len(text) - len("Answer:") - 1
            assert g.scratch_correct is (True if scratch else None)


def test_grader_on_wrong_truncated_and_odd_completions() -> None:
    p = "a3b5c9d2="
    assert not cs.grade(p, "Answer:8").correct
    assert not cs.grade(p, "Answer:9", finished=False).correct
    assert not cs.grade(p, "a33b58\nAnswer:9").well_formed  # a wrong scratch, right answer
    assert cs.grade(p, "a33b58\nAnswer:9").correct
    assert not cs.grade(p, "no answer").correct
    assert not cs.grade(p, cs.make_completion("3592", answer="1")).correct


def test_registered_task_rows_eval_rows_and_warmup() -> None:
    task = get_task("chainsum")
    src = type("Src", (), {"size": 50, "seed": 1})()
    assert len(task.rows(src)) == 50
    ev = task.eval_rows and task.eval_rows(70)
    assert ev and len(ev) >= 70 and {cs.split_of(r["prompt"]) for r in ev} == {"eval"}
    assert task.grade("a3b5=", "Answer:8", "8", True)
    assert task.difficulty("a3b5c9=") == 3
    batches = cs.warmup_batches(3, seed=0)
    assert len(batches) == 3 and all(len(b) == cs.WARMUP_RECIPE["batch"] for b in batches)
    assert batches == cs.warmup_batches(3, seed=0)
    for prompt, text in (pair for b in batches for pair in b):
        assert cs.split_of(prompt) == "warmup"
        assert cs.grade(prompt, text).correct and cs.grade(prompt, text).well_formed
    scratch = sum(cs.grade(p, t).used_scratch for b in batches for p, t in b)
    assert 0.3 < scratch / (3 * cs.WARMUP_RECIPE["batch"]) < 0.7
    rng = random.Random(0)
    assert cs.draw("test", 6, rng).split == "test"
