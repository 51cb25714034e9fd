"""Tagged bit counting: ``a1b0c1d1e0=`` -> ``Answer:3`` (the number of 1s).

(Over 350 lines on purpose: a task is one file -- its problem space, grammar, grader, format
warm-up and registration -- so that adding one is one file plus one registration.)

Why this task (see /work/shared/docs/STUDY.md): a tiny byte-level model can learn it, its
problem space (all 2-14 bit strings: 32,764 prompts) is far larger than an RL budget, and
its difficulty (the number of bits) spreads from trivial to hard, so groups come out
all-correct, all-wrong and mixed.

Completion grammar (every format the task emits, then EOS)::

    [filler][scratch "\\n"]Answer:<n>

* filler: ``.`` repeated 0..6 times: reasoning-looking length that never helps;
* scratch: the running count after each tag, ``a1b1c2d3e3`` for ``a1b0c1d1e0=`` (copy the
  bit after each tag and add it): useful length that helps on long strings;
* ``Answer:<n>``: the decimal count.

"Reasoning tokens" are the tokens before ``Answer:``; the grader reports them split into
filler and scratch. With the builtin byte-level tokenizer one character is one token.

Splits are by a stable hash (sha256 of the prompt text), so every process, machine and
Python version puts a prompt in the same split, and the splits are disjoint by construction.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from agpo_trainer.tasks import base, grammar
from agpo_trainer.tasks.base import Row, stable_hash

NAME = "bitcount"
TAGS = "abcdefghijklmn"  # one tag per bit position: at most 14 bits
MIN_BITS = 2
MAX_BITS = len(TAGS)
MAX_FILLER = grammar.MAX_FILLER
FILLER_CHAR = grammar.FILLER_CHAR
ANSWER_PREFIX = grammar.ANSWER_PREFIX
Grade = grammar.Grade
PROMPT_SUFFIX = "="

# Fractions of the problem space, in hash order (cumulative bounds below). Warm-up (the
# supervised format warm-up) and train (RL prompts) are large; eval (the gate, checkpoints)
# and test (final endpoints, never tuned on) are 10% each.
SPLITS: tuple[tuple[str, float], ...] = (
    ("warmup", 0.4),
    ("train", 0.4),
    ("eval", 0.1),
    ("test", 0.1),
)
SPLIT_NAMES, split_of = base.hash_splits(SPLITS)  # split_of(prompt): by its stable hash


@dataclass(frozen=True)
class Problem:
    """One prompt: its bits, the prompt text, the reference answer and the difficulty."""

    bits: str  # e.g. "10110"

    @property
    def prompt(self) -> str:
        return make_prompt(self.bits)

    @property
    def answer(self) -> str:
        return str(self.bits.count("1"))

    @property
    def difficulty(self) -> int:
        """The number of bits (2..14): longer strings are harder to count directly."""
        return len(self.bits)

    @property
    def split(self) -> str:
        return split_of(self.prompt)


def make_prompt(bits: str) -> str:
    """``"1011"`` -> ``"a1b0c1d1="``."""
    if not MIN_BITS <= len(bits) <= MAX_BITS or set(bits) - {"0", "1"}:
        raise ValueError(f"bits must be {MIN_BITS}-{MAX_BITS} characters of 0/1, got {bits!r}")
    return "".join(f"{t}{b}" for t, b in zip(TAGS, bits, strict=False)) + PROMPT_SUFFIX


_PROMPT_RE = re.compile(rf"^((?:[a-n][01]){{{MIN_BITS},{MAX_BITS}}})=$")


def parse_prompt(prompt: str) -> str:
    """The bits of a prompt (inverse of :func:`make_prompt`); ValueError if not one."""
    m = _PROMPT_RE.match(prompt)
    if m is None:
        raise ValueError(f"not a bitcount prompt: {prompt!r}")
    pairs = m.group(1)
    tags, bits = pairs[0::2], pairs[1::2]
    if tags != TAGS[: len(tags)]:
        raise ValueError(f"tags must be {TAGS[: len(tags)]!r} in order, got {tags!r}")
    return bits


def answer_of(prompt: str) -> str:
    return str(parse_prompt(prompt).count("1"))


def difficulty_of(prompt: str) -> int:
    return len(parse_prompt(prompt))


def all_problems() -> Iterator[Problem]:
    """Every problem, by number of bits then bit value: 2**15 - 4 = 32,764 in all."""
    for n in range(MIN_BITS, MAX_BITS + 1):
        for value in range(1 << n):
            yield Problem(format(value, f"0{n}b"))


def problems(split: str, difficulties: range | None = None) -> list[Problem]:
    """All problems of ``split`` (in :func:`all_problems` order), optionally by difficulty."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLIT_NAMES)}")
    wanted = difficulties or range(MIN_BITS, MAX_BITS + 1)
    return [p for p in _by_split()[split] if p.difficulty in wanted]


@lru_cache(maxsize=1)
def _by_split() -> dict[str, tuple[Problem, ...]]:
    """Every problem grouped by split, computed once per process (32,764 sha256 calls)."""
    out: dict[str, list[Problem]] = {name: [] for name in SPLIT_NAMES}
    for p in all_problems():
        out[p.split].append(p)
    return {name: tuple(ps) for name, ps in out.items()}


def stratified(split: str, per_difficulty: int) -> list[Problem]:
    """Up to ``per_difficulty`` problems of each difficulty from ``split``, chosen by hash.

    The choice (lowest :func:`stable_hash` of ``prompt + "#pick"`` first) is deterministic and
    independent of the split hash. Short strings have few problems (2 bits: 4 in all), so
    their buckets hold what the split has.
    """
    out: list[Problem] = []
    for n in range(MIN_BITS, MAX_BITS + 1):
        bucket = problems(split, range(n, n + 1))
        bucket.sort(key=lambda p: stable_hash(p.prompt + "#pick"))
        out.extend(bucket[:per_difficulty])
    return out


def sample_by_difficulty(split: str, k: int, rng: random.Random) -> list[Problem]:
    """``k`` problems of ``split``: difficulty uniform over the buckets the split has, then a
    uniform problem within it (so long strings do not crowd out short ones)."""
    buckets = [b for n in range(MIN_BITS, MAX_BITS + 1) if (b := problems(split, range(n, n + 1)))]
    return [rng.choice(rng.choice(buckets)) for _ in range(k)]


# --------------------------------------------------------------------------- completions
def scratch_for(bits: str) -> str:
    """The running count after each tag: ``"10110"`` -> ``"a1b1c2d3e3"``."""
    out, count = [], 0
    for tag, bit in zip(TAGS, bits, strict=False):
        count += bit == "1"
        out.append(f"{tag}{count}")
    return "".join(out)


def make_completion(
    bits: str,
    *,
    filler: int = 0,
    scratch: bool = False,
    answer: str | None = None,
    scratch_of: Callable[[str], str] = scratch_for,
) -> str:
    """A completion in the task's grammar (without EOS). ``answer`` overrides the right one;
    ``scratch_of`` is the scratch format (``bitcount_copy`` has its own)."""
    ans = str(bits.count("1")) if answer is None else answer
    return grammar.make_completion(
        ans, scratch=scratch_of(bits) if scratch else None, filler=filler
    )


def all_formats(bits: str) -> list[str]:
    """Every completion the task emits for ``bits`` (each filler length, with/without scratch)."""
    return [
        make_completion(bits, filler=f, scratch=s)
        for s in (False, True)
        for f in range(MAX_FILLER + 1)
    ]


def grade(
    prompt: str,
    completion: str,
    *,
    finished: bool = True,
    scratch_of: Callable[[str], str] = scratch_for,
) -> Grade:
    """Grade ``completion`` (decoded text, EOS stripped) for ``prompt``
    (:func:`agpo_trainer.tasks.grammar.grade`): correct iff it finished (pass
    ``finished=False`` for a truncated one) and ends with ``Answer:<n>``, ``n`` the count of 1s.
    """
    bits = parse_prompt(prompt)
    return grammar.grade(completion, str(bits.count("1")), scratch_of(bits), finished=finished)


def reward(prompt: str, completion: str, *, finished: bool = True) -> float:
    """1.0 if :func:`grade` says correct, else 0.0 (the ``accuracy`` reward)."""
    return 1.0 if grade(prompt, completion, finished=finished).correct else 0.0


def _row(p: Problem) -> Row:
    return {"prompt": p.prompt, "answer": p.answer, "difficulty": str(p.difficulty)}


def rows(split: str) -> list[Row]:
    """The split as dataset rows (``prompt``, ``answer``, ``difficulty``)."""
    return [_row(p) for p in problems(split)]


def sampled_rows(split: str, size: int, seed: int) -> list[Row]:
    """``size`` rows of ``split`` drawn by :func:`sample_by_difficulty` (seeded): the
    difficulty-uniform prompt distribution of the learnability gate's RL run. Short strings
    repeat (there are only 4 two-bit prompts); :func:`rows` is string-uniform instead (half
    of it 14-bit strings)."""
    return [_row(p) for p in sample_by_difficulty(split, size, random.Random(seed))]


def eval_rows(prompts: int) -> list[Row]:
    """At least ``prompts`` rows of the held-out ``eval`` split (never ``test``) when it has
    that many: the same number per difficulty (:func:`stratified`; short buckets hold what
    they have), so short strings are not crowded out by the many long ones."""
    per = -(-prompts // (MAX_BITS - MIN_BITS + 1))
    chosen = stratified("eval", per)
    total = len(problems("eval"))
    while len(chosen) < min(prompts, total):  # short buckets hold fewer: the long ones give more
        per += 1
        chosen = stratified("eval", per)
    return [_row(p) for p in chosen]


# --------------------------------------------------------------------------- the format warm-up
#: The learnability gate's tiny-skew6 recipe (study/gate.py, docs/results.md): the task's mixed
#: formats with the right answers, on the warm-up split only, long strings rarely. It is also
#: the warmed weights' cache key: bump ``version`` when its meaning changes.
WARMUP_RECIPE: dict[str, Any] = {
    "version": 2, "init_std": 0.02, "lr": 1e-3, "lr_warmup": 50, "betas": (0.9, 0.98), "clip": 1.0,
    "batch": 64, "scratch_prob": 0.5, "decay": 0.5, "decay_from": 6, "seed_offset": 7,
}  # fmt: skip


def warmup_batches(
    steps: int,
    seed: int,
    recipe: dict[str, Any] = WARMUP_RECIPE,
    scratch_of: Callable[[str], str] = scratch_for,
) -> list[list[tuple[str, str]]]:
    """Every warm-up batch as (prompt, completion) pairs: ``warmup``-split prompts only, bit
    count ``n`` drawn with weight ``decay ** max(0, n - decay_from)``, then a uniform prompt
    of that length, filler uniform 0..6, scratch with probability ``scratch_prob``, the right
    answer."""
    r = recipe
    rng = random.Random(seed + r["seed_offset"])
    buckets: dict[int, list[Problem]] = {}
    for p in problems("warmup"):
        buckets.setdefault(p.difficulty, []).append(p)
    keys = sorted(buckets)
    weights = [r["decay"] ** max(0, n - r["decay_from"]) for n in keys]
    out = []
    for _ in range(steps):
        batch = []
        for _ in range(r["batch"]):
            p = rng.choice(buckets[rng.choices(keys, weights)[0]])
            filler = rng.randint(0, MAX_FILLER)
            # direct_max_bits (not in bitcount's own recipe): longer strings always get
            # scratch, so a direct answer must extrapolate to them (a bitcount_copy variant)
            scratch = rng.random() < r["scratch_prob"]
            scratch = scratch or p.difficulty > r.get("direct_max_bits", MAX_BITS)
            text = make_completion(p.bits, filler=filler, scratch=scratch, scratch_of=scratch_of)
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
