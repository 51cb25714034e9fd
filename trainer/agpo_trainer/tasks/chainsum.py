"""Tagged chain sums mod 10: ``a3b5c9d2=`` -> ``Answer:9`` (3 + 5 + 9 + 2 = 19, mod 10).

(A task is one file -- its problem space, grammar, grader, format warm-up and registration.)

Why this task (issue #19, /work/shared/docs/STUDY.md): on ``bitcount`` reasoning does not
pay (a small transformer counts bits in one pass about as well as with a running count), so
"fewer reasoning tokens at equal accuracy" is nearly empty there. A sum mod 10 of many digits
in one pass is a parity-like function that small transformers do not learn, while each step of
the running sum is one lookup (the digit after the same tag in the prompt) and one of 100
addition facts. So direct answers work on 2 operands and fall towards chance (10%) on long
chains, and the running sum keeps working: reasoning pays on hard prompts and is wasted on
easy ones, which is the overthinking AGPO's length reward is about.

Completion grammar (every format the task emits, then EOS)::

    [filler][scratch "\\n"]Answer:<d>

* filler: ``.`` repeated 0..6 times: reasoning-looking length that never helps;
* scratch: per operand its tag, the operand copied and the running sum mod 10:
  ``a33b58c97d29`` for ``a3b5c9d2=`` (copying first makes each step two short hops, one
  lookup by tag and one addition of neighbours; the gate's first variants summed in one hop
  and the 0.36M model never learned the running sum: docs/results.md);
* ``Answer:<d>``: the sum mod 10, one digit.

"Reasoning tokens" are the tokens before ``Answer:``; the grader reports them split into
filler and scratch. With the builtin byte-level tokenizer one character is one token.

The problem space (2-8 operands: 111,111,100 prompts) is far larger than any budget, so it is
never enumerated past 4 operands: splits are by a stable hash of the prompt (the same in every
process, machine and Python version; disjoint by construction), and a split's prompts of a
length are drawn by rejection from a seeded stream.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from agpo_trainer.tasks import base, grammar
from agpo_trainer.tasks.base import Row, stable_hash

NAME = "chainsum"
TAGS = "abcdefgh"  # one tag per operand: at most 8
MIN_OPS = 2
MAX_OPS = len(TAGS)
MODULUS = 10
MAX_FILLER = grammar.MAX_FILLER
FILLER_CHAR = grammar.FILLER_CHAR
ANSWER_PREFIX = grammar.ANSWER_PREFIX
Grade = grammar.Grade
PROMPT_SUFFIX = "="
ENUMERATE_UP_TO = 4  # operand counts whose 10**n prompts are listed in full (10,000 at most)
CANDIDATES = 20_000  # prompts drawn per longer operand count for stratified sets

# Fractions of the problem space, in hash order: warm-up (supervised format warm-up) and
# train (RL prompts) are large; eval (the gate, checkpoints) and test (final endpoints,
# never tuned on) are 10% each.
SPLITS: tuple[tuple[str, float], ...] = (
    ("warmup", 0.4),
    ("train", 0.4),
    ("eval", 0.1),
    ("test", 0.1),
)
SPLIT_NAMES, split_of = base.hash_splits(SPLITS)  # split_of(prompt): by its stable hash


@dataclass(frozen=True)
class Problem:
    """One prompt: its operand digits, the prompt text, the answer and the difficulty."""

    digits: str  # e.g. "3592"

    @property
    def prompt(self) -> str:
        return make_prompt(self.digits)

    @property
    def answer(self) -> str:
        return str(sum(map(int, self.digits)) % MODULUS)

    @property
    def difficulty(self) -> int:
        """The number of operands (2..8): longer chains are harder to sum in one pass."""
        return len(self.digits)

    @property
    def split(self) -> str:
        return split_of(self.prompt)


def make_prompt(digits: str) -> str:
    """``"3592"`` -> ``"a3b5c9d2="``."""
    if not MIN_OPS <= len(digits) <= MAX_OPS or not digits.isdigit() or not digits.isascii():
        raise ValueError(f"digits must be {MIN_OPS}-{MAX_OPS} characters 0-9, got {digits!r}")
    return "".join(f"{t}{d}" for t, d in zip(TAGS, digits, strict=False)) + PROMPT_SUFFIX


_PROMPT_RE = re.compile(rf"^((?:[a-h][0-9]){{{MIN_OPS},{MAX_OPS}}})=$")


def parse_prompt(prompt: str) -> str:
    """The digits of a prompt (inverse of :func:`make_prompt`); ValueError if not one."""
    m = _PROMPT_RE.match(prompt)
    if m is None:
        raise ValueError(f"not a chainsum prompt: {prompt!r}")
    pairs = m.group(1)
    tags, digits = pairs[0::2], pairs[1::2]
    if tags != TAGS[: len(tags)]:
        raise ValueError(f"tags must be {TAGS[: len(tags)]!r} in order, got {tags!r}")
    return digits


def answer_of(prompt: str) -> str:
    return Problem(parse_prompt(prompt)).answer


def difficulty_of(prompt: str) -> int:
    return len(parse_prompt(prompt))


@cache
def _candidates(n: int) -> tuple[Problem, ...]:
    """The prompts of ``n`` operands a split's sets are drawn from: all of them up to
    :data:`ENUMERATE_UP_TO` operands, else :data:`CANDIDATES` distinct ones from a stream
    seeded by ``n`` (the same everywhere)."""
    if n <= ENUMERATE_UP_TO:
        return tuple(Problem(format(v, f"0{n}d")) for v in range(MODULUS**n))
    rng = random.Random(f"chainsum-candidates-{n}")
    seen: dict[str, None] = {}
    while len(seen) < CANDIDATES:
        seen.setdefault("".join(rng.choice("0123456789") for _ in range(n)))
    return tuple(Problem(d) for d in seen)


@cache
def bucket(split: str, n: int) -> tuple[Problem, ...]:
    """The candidates of ``n`` operands in ``split``, lowest ``stable_hash(prompt + "#pick")``
    first (deterministic, independent of the split hash)."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLIT_NAMES)}")
    if not MIN_OPS <= n <= MAX_OPS:
        raise ValueError(f"operand count must be {MIN_OPS}-{MAX_OPS}, got {n}")
    ps = [p for p in _candidates(n) if p.split == split]
    ps.sort(key=lambda p: stable_hash(p.prompt + "#pick"))
    return tuple(ps)


def stratified(split: str, per_difficulty: int) -> list[Problem]:
    """Up to ``per_difficulty`` problems of each operand count from ``split`` (2 operands:
    the ~10 the split has)."""
    return [p for n in range(MIN_OPS, MAX_OPS + 1) for p in bucket(split, n)[:per_difficulty]]


def draw(split: str, n: int, rng: random.Random) -> Problem:
    """A uniform problem of ``n`` operands in ``split`` (rejection on the split hash; short
    chains from their enumerated bucket)."""
    if n <= ENUMERATE_UP_TO:
        return rng.choice(bucket(split, n))
    while True:
        p = Problem("".join(rng.choice("0123456789") for _ in range(n)))
        if p.split == split:
            return p


def sample_by_difficulty(split: str, k: int, rng: random.Random) -> list[Problem]:
    """``k`` problems of ``split``: operand count uniform, then a uniform problem of it."""
    return [draw(split, rng.randint(MIN_OPS, MAX_OPS), rng) for _ in range(k)]


# --------------------------------------------------------------------------- completions
def scratch_for(digits: str) -> str:
    """Tag, operand, running sum mod 10 per operand: ``"3592"`` -> ``"a33b58c97d29"``."""
    out, total = [], 0
    for tag, d in zip(TAGS, digits, strict=False):
        total = (total + int(d)) % MODULUS
        out.append(f"{tag}{d}{total}")
    return "".join(out)


def make_completion(
    digits: str, *, filler: int = 0, scratch: bool = False, answer: str | None = None
) -> str:
    """A completion in the task's grammar (without EOS). ``answer`` overrides the right one."""
    ans = Problem(digits).answer if answer is None else answer
    return grammar.make_completion(
        ans, scratch=scratch_for(digits) if scratch else None, filler=filler
    )


def grade(prompt: str, completion: str, *, finished: bool = True) -> Grade:
    """Grade ``completion`` (decoded text, EOS stripped) for ``prompt``
    (:func:`agpo_trainer.tasks.grammar.grade`): correct iff it finished and ends with
    ``Answer:<d>``, ``d`` the sum mod 10."""
    digits = parse_prompt(prompt)
    return grammar.grade(completion, Problem(digits).answer, scratch_for(digits), finished=finished)


def _row(p: Problem) -> Row:
    return {"prompt": p.prompt, "answer": p.answer, "difficulty": str(p.difficulty)}


def sampled_rows(split: str, size: int, seed: int) -> list[Row]:
    """``size`` rows of ``split``, operand count uniform (seeded)."""
    return [_row(p) for p in sample_by_difficulty(split, size, random.Random(seed))]


def eval_rows(prompts: int) -> list[Row]:
    """At least ``prompts`` rows of the held-out ``eval`` split (never ``test``), the same
    number per operand count (2 operands hold what the split has, the rest give more)."""
    per = -(-prompts // (MAX_OPS - MIN_OPS + 1))
    chosen = stratified("eval", per)
    while len(chosen) < prompts:
        per += 1
        chosen = stratified("eval", per)
    return [_row(p) for p in chosen]


# --------------------------------------------------------------------------- the format warm-up
#: The warm-up recipe (fixed by the second-edition gate, study/gate2.py): mixed formats with the
#: right answers on the warm-up split only, operand count uniform. It is also the warmed
#: weights' cache key: bump ``version`` when its meaning changes.
WARMUP_RECIPE: dict[str, Any] = {
    "version": 2, "init_std": 0.02, "lr": 1e-3, "lr_warmup": 50, "betas": (0.9, 0.98), "clip": 1.0,
    "batch": 64, "scratch_prob": 0.5, "seed_offset": 7,
}  # fmt: skip


def warmup_batches(steps: int, seed: int) -> list[list[tuple[str, str]]]:
    """Every warm-up batch as (prompt, completion) pairs: ``warmup``-split prompts only,
    operand count uniform, filler uniform 0..6, scratch with probability ``scratch_prob``,
    the right answer."""
    r = WARMUP_RECIPE
    rng = random.Random(seed + r["seed_offset"])
    out = []
    for _ in range(steps):
        batch = []
        for _ in range(r["batch"]):
            p = draw("warmup", rng.randint(MIN_OPS, MAX_OPS), rng)
            text = make_completion(
                p.digits,
                filler=rng.randint(0, MAX_FILLER),
                scratch=rng.random() < r["scratch_prob"],
            )
            batch.append((p.prompt, text))
        out.append(batch)
    return out


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
