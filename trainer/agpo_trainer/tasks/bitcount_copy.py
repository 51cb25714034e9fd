"""Tagged bit counting with a copy-then-count scratch: ``bitcount``'s prompts, splits, answers
and grader, one change in the scratch: ``a1b0c1d1e0=`` -> ``a11b01c12d13e03`` (per bit its
tag, the bit copied, then the running count).

Why (issue #19, docs/results.md "Second-edition gate"): with ``bitcount``'s one-hop scratch
(``a1b1c2d3e3``: look up the bit by its tag and add it in one token) the small models never
made scratch more accurate than a direct answer, so reasoning did not pay. Copying first splits
each step into two short hops (a lookup by tag, then an addition of neighbours), which the
0.36M model learns on the ``chainsum`` task (forced running sums right 94% of the time at every
length). On bit counting a direct answer stays good on short strings, so scratch is wasted
there: the overthinking AGPO's length reward is about.

Everything but the scratch format is :mod:`bitcount`'s (the same problems in the same splits);
the warm-up is bitcount's recipe (long strings rarely) with this scratch, direct answers only up
to 10 bits and scratch on 35% of the shorter strings: the gate's passing variant (1000 steps).
"""

from __future__ import annotations

from typing import Any

from agpo_trainer.tasks import base, bitcount
from agpo_trainer.tasks.bitcount import (
    ANSWER_PREFIX,
    MAX_BITS,
    MAX_FILLER,
    MIN_BITS,
    TAGS,
    Grade,
    Problem,
    difficulty_of,
    eval_rows,
    problems,
    sampled_rows,
    split_of,
    stratified,
)

NAME = "bitcount-copy"

__all__ = [
    "ANSWER_PREFIX", "MAX_BITS", "MAX_FILLER", "MIN_BITS", "NAME", "RECIPE_V1", "TAGS",
    "WARMUP_RECIPE",
    "Grade", "Problem", "difficulty_of", "eval_rows", "grade", "make_completion", "problems",
    "sampled_rows", "scratch_for", "split_of", "stratified", "warmup_batches",
]  # fmt: skip


def scratch_for(bits: str) -> str:
    """Tag, bit, running count per bit: ``"10110"`` -> ``"a11b01c12d13e03"``."""
    out, count = [], 0
    for tag, bit in zip(TAGS, bits, strict=False):
        count += bit == "1"
        out.append(f"{tag}{bit}{count}")
    return "".join(out)


def make_completion(
    bits: str, *, filler: int = 0, scratch: bool = False, answer: str | None = None
) -> str:
    """A completion in this task's grammar (without EOS)."""
    return bitcount.make_completion(
        bits, filler=filler, scratch=scratch, answer=answer, scratch_of=scratch_for
    )


def grade(prompt: str, completion: str, *, finished: bool = True) -> Grade:
    """:func:`bitcount.grade` with this task's scratch (correctness is the answer's alone)."""
    return bitcount.grade(prompt, completion, finished=finished, scratch_of=scratch_for)


#: the first recipe: bitcount's (long strings rarely, scratch on half the strings) with this
#: scratch; its own cache key (``task``, ``version``). The gate's variants start from it.
RECIPE_V1: dict[str, Any] = {**bitcount.WARMUP_RECIPE, "task": NAME, "version": 1}
#: the recipe that passed the second edition's gate with 1000 warm-up steps (docs/results.md,
#: rule set 2, variant ``bc-copy-1000-dmax10-s35``: three seeds): direct answers shown only up
#: to 10 bits, so a direct count on 11-14 bits must extrapolate and the running count pays
#: there, and scratch on 35% of the shorter strings, so easy prompts still get some of it
WARMUP_RECIPE: dict[str, Any] = {
    **RECIPE_V1, "version": 2, "direct_max_bits": 10, "scratch_prob": 0.35,
}  # fmt: skip


def warmup_batches(steps: int, seed: int) -> list[list[tuple[str, str]]]:
    return bitcount.warmup_batches(steps, seed, WARMUP_RECIPE, scratch_for)


TASK = base.register_task(
    base.Task(
        name=NAME,
        rows=lambda src: sampled_rows("train", src.size, src.seed),
        grade=lambda prompt, completion, answer, finished: (
            grade(prompt, completion, finished=finished).correct
        ),
        difficulty=difficulty_of,
        eval_rows=eval_rows,
        warmup=base.own_recipe(warmup_batches, WARMUP_RECIPE),
    )
)
