"""The builtin bit-counting task: problem space, stable splits, grammar, grader, difficulty."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from agpo_trainer.tasks import bitcount as bc


def test_problem_space_is_every_2_to_14_bit_string() -> None:
    probs = list(bc.all_problems())
    assert len(probs) == 2**15 - 4 == 32_764
    assert len({p.prompt for p in probs}) == len(probs)
    assert {p.difficulty for p in probs} == set(range(2, 15))
    assert Counter(p.difficulty for p in probs)[14] == 2**14


@pytest.mark.parametrize(
    ("bits", "prompt", "answer", "scratch"),
    [
        ("10", "a1b0=", "1", "a1b1"),
        ("10110", "a1b0c1d1e0=", "3", "a1b1c2d3e3"),
        (
            "1" * 14,
            "".join(f"{t}1" for t in bc.TAGS) + "=",
            "14",
            "a1b2c3d4e5f6g7h8i9j10k11l12m13n14",
        ),
    ],
)
def test_prompt_answer_and_scratch(bits: str, prompt: str, answer: str, scratch: str) -> None:
    p = bc.Problem(bits)
    assert (p.prompt, p.answer, p.difficulty) == (prompt, answer, len(bits))
    assert bc.parse_prompt(prompt) == bits
    assert bc.answer_of(prompt) == answer and bc.difficulty_of(prompt) == len(bits)
    assert bc.scratch_for(bits) == scratch


@pytest.mark.parametrize("bad", ["1", "1" * 15, "10a", ""])
def test_make_prompt_rejects_bad_bits(bad: str) -> None:
    with pytest.raises(ValueError):
        bc.make_prompt(bad)


@pytest.mark.parametrize("bad", ["a1b0", "b1a0=", "a1=", "a2b0=", "3+4"])
def test_parse_prompt_rejects_other_text(bad: str) -> None:
    with pytest.raises(ValueError):
        bc.parse_prompt(bad)


def test_splits_are_disjoint_cover_everything_and_have_the_fractions() -> None:
    by_split = {name: {p.prompt for p in bc.problems(name)} for name in bc.SPLIT_NAMES}
    names = list(by_split)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not by_split[a] & by_split[b], (a, b)
    assert sum(map(len, by_split.values())) == 32_764
    for name, frac in bc.SPLITS:
        assert abs(len(by_split[name]) / 32_764 - frac) < 0.01, name


# Hard-coded: the split of a prompt must never change (checkpoints, results and the warm
# model cache depend on it). These are sha256's first 8 bytes, not Python's hash().
EXPECTED = {
    "a1b0=": ("warmup", 0x28ED9DCB2E1DFC25),
    "a0b1=": ("train", 0x7FA1DA823239904A),
    "a1b0c1d1e0=": ("test", 0xF7158D8C09C189E0),
    "a0b0c0d0e0f0g0h0i0j0k0l0m0n0=": ("warmup", 0x474365F79C59C546),
    "a1b1c1d1e1f1g1h1i1j1k1l1m1n1=": ("train", 0xAE7498CB4EFC8034),
}


@pytest.mark.parametrize("prompt", sorted(EXPECTED))
def test_split_of_known_prompts_is_fixed(prompt: str) -> None:
    split, h = EXPECTED[prompt]
    assert bc.stable_hash(prompt) == h
    assert bc.split_of(prompt) == split


def test_split_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "from agpo_trainer.tasks import bitcount as b;"
        "print(','.join(b.split_of(p.prompt) for p in b.stratified('eval', 3)))"
    )
    here = ",".join(bc.split_of(p.prompt) for p in bc.stratified("eval", 3))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == here
    assert set(here.split(",")) == {"eval"}


def test_stratified_and_sampling_stay_in_their_split_and_spread_difficulty() -> None:
    ev = bc.stratified("eval", 40)
    assert {p.split for p in ev} == {"eval"}
    counts = Counter(p.difficulty for p in ev)
    assert all(counts[n] == 40 for n in range(9, 15))
    assert bc.stratified("eval", 40) == ev  # deterministic
    drawn = bc.sample_by_difficulty("train", 2000, random.Random(0))
    assert {p.split for p in drawn} == {"train"}
    by_len = Counter(p.difficulty for p in drawn)
    # difficulty-uniform over the buckets, not string-uniform (which is half 14-bit strings)
    assert by_len[14] < 300 and min(by_len.values()) > 80
    assert len(by_len) >= 12


@pytest.mark.parametrize("bits", ["10", "0000", "10110", "1101011", "1" * 14, "01" * 7])
def test_grader_accepts_every_emitted_format(bits: str) -> None:
    prompt = bc.make_prompt(bits)
    formats = bc.all_formats(bits)
    assert len(formats) == 2 * (bc.MAX_FILLER + 1)
    for text in formats:
        g = bc.grade(prompt, text)
        assert g.correct and g.well_formed, text
        assert g.answer == str(bits.count("1"))
        assert g.reasoning_tokens == len(text) - len("Answer:" + g.answer)
        assert g.reasoning_tokens == g.filler_tokens + g.scratch_tokens
        assert g.filler_tokens == len(text) - len(text.lstrip("."))
        assert g.used_scratch == ("\n" in text)
        if g.used_scratch:
            assert g.scratch_tokens == len(bc.scratch_for(bits)) + 1 and g.scratch_correct
        assert bc.reward(prompt, text) == 1.0


def test_grader_token_counts_for_one_completion() -> None:
    g = bc.grade("a1b0c1d1e0=", "..a1b1c2d3e3\nAnswer:3")
    assert (g.reasoning_tokens, g.filler_tokens, g.scratch_tokens) == (13, 2, 11)
    assert g.correct and g.used_scratch and g.scratch_correct and g.well_formed


@pytest.mark.parametrize(
    ("text", "finished", "correct", "well_formed"),
    [
        ("Answer:2", False, False, False),  # truncated: no EOS before the limit
        ("a1b1c2\nAns", False, False, False),  # truncated mid-answer
        ("a1b1c2", True, False, False),  # no answer at all
        ("Answer:1", True, False, True),  # wrong answer, grammatical
        ("Answer:21", True, False, True),
        ("a1b2c3\nAnswer:2", True, True, False),  # right answer, wrong scratch
        ("xyzAnswer:2", True, True, False),  # free text counts as scratch tokens
        ("Answer:2 ", True, True, False),  # trailing space tolerated for correctness
        ("Answer:2\nAnswer:1", True, False, False),  # the last answer counts
        ("." * 9 + "Answer:2", True, True, False),  # more filler than the grammar emits
    ],
)
def test_grader_on_wrong_and_odd_completions(
    text: str, finished: bool, correct: bool, well_formed: bool
) -> None:
    g = bc.grade("a1b0c1=", text, finished=finished)
    assert g.correct is correct
    assert g.well_formed is well_formed
    assert bc.reward("a1b0c1=", text, finished=finished) == float(correct)


def test_wrong_answer_override_is_graded_wrong() -> None:
    text = bc.make_completion("1011", filler=3, scratch=True, answer="2")
    g = bc.grade("a1b0c1d1=", text)
    assert not g.correct and g.answer == "2" and g.filler_tokens == 3


def test_rows_for_data_py() -> None:
    rows = bc.rows("eval")
    assert len(rows) == len(bc.problems("eval"))
    assert all(r["prompt"].endswith("=") for r in rows)
    assert all(bc.answer_of(r["prompt"]) == r["answer"] for r in rows)


def test_sampled_rows_are_seeded_difficulty_uniform_and_in_their_split() -> None:
    rows = bc.sampled_rows("train", 1300, seed=3)
    assert rows == bc.sampled_rows("train", 1300, seed=3)
    assert rows != bc.sampled_rows("train", 1300, seed=4)
    assert {bc.split_of(r["prompt"]) for r in rows} == {"train"}
    by_len = Counter(int(r["difficulty"]) for r in rows)
    assert max(by_len.values()) < 3 * min(by_len.values())


def test_unknown_split() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        bc.problems("dev")
