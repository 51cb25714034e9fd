"""Integer arithmetic with single-digit results: ``3+4-2`` -> ``5``.

Single-digit results keep the answer space small enough that a fresh policy is sometimes right,
so RL has a signal from the first step; more operands (``builtin.operands``) make it
multi-step. It has no held-out split (evaluate it with ``evaluation.source.fraction``), and its
format warm-up teaches only the answer format: one digit, then end of text, with *random*
digits, so accuracy stays near chance (10%) and everything above that is learned by RL.
"""

from __future__ import annotations

import random

from agpo_trainer.tasks.base import Row, Task, WarmupBatch, WarmupInput, WarmupRecipe, register_task

NAME = "arithmetic"
WARMUP_BATCH = 32  # sequences per warm-up step
WARMUP_SEED_OFFSET = 7  # the warm-up's own random stream, apart from the RL run's


def arithmetic_rows(size: int, seed: int, operands: int = 2) -> list[Row]:
    """``size`` expressions such as ``3+4-2`` of ``operands`` numbers whose value is a digit."""
    rng = random.Random(seed)
    rows: list[Row] = []
    while len(rows) < size:
        nums = [rng.randint(0, 9) for _ in range(operands)]
        ops = [rng.choice("+-") for _ in range(operands - 1)]
        expr = str(nums[0]) + "".join(f"{op}{n}" for op, n in zip(ops, nums[1:], strict=True))
        value = nums[0] + sum(n if op == "+" else -n for op, n in zip(ops, nums[1:], strict=True))
        if 0 <= value <= 9:
            rows.append({"prompt": expr, "answer": str(value)})
    return rows


def difficulty(prompt: str) -> int:
    """The number of operations in the expression."""
    return sum(prompt.count(op) for op in "+-") or 1


def grade(prompt: str, completion: str, answer: str, finished: bool) -> bool:
    """Correct when the completion finished and is the answer's digit."""
    return finished and completion.strip() == answer.strip()


def warmup_batches(inp: WarmupInput) -> list[WarmupBatch]:
    """Per step: ``WARMUP_BATCH`` RL prompts (templated, drawn with replacement), each with a
    random digit as its completion."""
    rng = random.Random(inp.seed + WARMUP_SEED_OFFSET)
    out = []
    for _ in range(inp.steps):
        batch = [inp.examples[rng.randrange(len(inp.examples))] for _ in range(WARMUP_BATCH)]
        out.append([(e.prompt, str(rng.randint(0, 9))) for e in batch])
    return out


TASK = register_task(
    Task(
        name=NAME,
        rows=lambda src: arithmetic_rows(src.size, src.seed, src.operands),
        grade=grade,
        difficulty=difficulty,
        warmup=WarmupRecipe(batches=warmup_batches),  # the policy's own optimizer, no cache
    )
)
