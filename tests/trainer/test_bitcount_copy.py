"""The builtin bitcount-copy task: bitcount's problems with a copy-then-count scratch."""

from __future__ import annotations

from agpo_trainer.tasks import bitcount, get_task
from agpo_trainer.tasks import bitcount_copy as bcc


def test_scratch_copies_each_bit_then_counts() -> None:
    assert bcc.scratch_for("10110") == "a11b01c12d13e03"
    assert bcc.scratch_for("1" * 11).endswith("i19j110k111")  # two-digit counts
    assert bcc.make_completion("10110", filler=2, scratch=True) == "..a11b01c12d13e03\nAnswer:3"


def test_grader_takes_its_own_scratch_and_the_answer_decides() -> None:
    prompt = bitcount.make_prompt("10110")
    own = bcc.grade(prompt, bcc.make_completion("10110", scratch=True))
    assert own.correct and own.well_formed and own.scratch_correct
    other = bcc.grade(prompt, bitcount.make_completion("10110", scratch=True))
    assert other.correct and not other.well_formed  # bitcount's scratch is not this grammar
    assert not bcc.grade(prompt, "a11b01\nAnswer:2").correct


def test_same_problems_and_splits_as_bitcount_and_registered() -> None:
    assert bcc.stratified("eval", 5) == bitcount.stratified("eval", 5)
    task = get_task("bitcount-copy")
    assert task.grade("a1b1=", "a11b12\nAnswer:2", "2", True)
    batches = bcc.warmup_batches(2, seed=0)
    texts = [t for b in batches for _, t in b]
    assert any("\n" in t for t in texts)
    for prompt, text in (pair for b in batches for pair in b):
        g = bcc.grade(prompt, text)
        assert g.correct and g.well_formed and bitcount.split_of(prompt) == "warmup"
    assert bcc.WARMUP_RECIPE["task"] == "bitcount-copy"  # its own warm-up cache key


def test_registered_warmup_shows_direct_answers_only_up_to_10_bits() -> None:
    """The recipe that passed the second-edition gate: longer strings always get scratch, and
    about 35% of the shorter ones do."""
    pairs = [pair for b in bcc.warmup_batches(40, seed=3) for pair in b]
    long = [t for p, t in pairs if bitcount.difficulty_of(p) > 10]
    short = [bcc.grade(p, t).used_scratch for p, t in pairs if bitcount.difficulty_of(p) <= 10]
    assert long and all(bcc.grade(p, t).used_scratch for p, t in pairs
                        if bitcount.difficulty_of(p) > 10)  # fmt: skip
    assert 0.30 < sum(short) / len(short) < 0.40
    v1 = {k: v for k, v in bcc.RECIPE_V1.items() if k != "version"}
    v2 = {k: v for k, v in bcc.WARMUP_RECIPE.items() if k != "version"}
    assert v2 == v1 | {"direct_max_bits": 10, "scratch_prob": 0.35}
    assert bcc.WARMUP_RECIPE["version"] != bcc.RECIPE_V1["version"]  # its own cache key
