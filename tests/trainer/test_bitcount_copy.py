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
