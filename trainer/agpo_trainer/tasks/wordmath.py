"""Templated grade-school math in natural language: ``Tom has 5 apples. He buys 3 more ...``
-> ``... Answer: 8``, for a small pretrained chat model (SmolLM2-135M-Instruct).

(Over 350 lines on purpose: a task is one file -- its problem space, splits, grader, format
warm-up and registration.)

Problems are plain arithmetic and word problems of one, two and three steps (items bought,
given away, shared, in boxes; ages; distances; prices and change), built from templates with
numbers sized per difficulty bucket, from what the model does right nearly always (one
operation on single digits) to what it rarely does (three steps, two-digit numbers):

====  =====================================================================
 1    plain, one operation on single digits (``What is 3 + 4?``)
 2    plain, one operation: two-digit +/- one-digit, the times table to 9x9
 3    word problem, one step, single-digit numbers
 4    plain, two operations on single digits, or two-digit +/- two-digit
 5    word problem, one step with two-digit numbers, or two steps with small ones
 6    word problem, two steps with two-digit numbers, or three steps with small ones
====  =====================================================================

A problem is a template and its numbers; its names, items and phrasing are drawn from a stable
hash of that key, so every key gives exactly one prompt. Large number ranges are thinned by the
integer walk to at most ``FAMILY_CAP`` problems a family. Every answer is a whole number >= 0.

Splits (``warmup`` / ``train`` / ``eval`` / ``test``) are by :func:`stable_hash` of the prompt
text, as in ``bitcount``: the same in every process, machine and Python version, disjoint by
construction. Nothing reads ``test`` but final reports.

Completion grammar: free reasoning (the worked steps, one per line, in the format warm-up and
the example turns), then a final line ``Answer: <n>``. "Reasoning tokens" are the tokens before
the last ``Answer:``. The grader reads the last line that starts with ``Answer:`` (markdown
``**`` allowed, thousands separators and a trailing period tolerated); a truncated completion
is wrong. That is also what the ``accuracy`` reward reads on this grammar.

The starting point (chosen with figures against a gate whose rules were fixed before them:
docs/results.md, "wordmath gate"): the prompt through the model's chat template with
:data:`SYSTEM_PROMPT` (``dataset.systemPrompt``), no example turns, and a
:data:`WARMUP_STEPS`-step format warm-up (``training.formatWarmupSteps``: worked solutions of
``warmup``-split problems) with ``maxCompletionTokens`` :data:`MAX_COMPLETION_TOKENS`. Example
turns (:func:`example_turns`, ``dataset.exampleTurns``, from the ``warmup`` split) alone left
SmolLM2-135M-Instruct at 0.10-0.14 accuracy at T=1 with an ``Answer:`` line in 53-59% of its
samples; after the warm-up: 0.40 and 98%.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from agpo_trainer.tasks import base
from agpo_trainer.tasks.base import Row, stable_hash

NAME = "wordmath"
ANSWER_PREFIX = "Answer:"
DIFFICULTIES: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
FAMILY_CAP = 1500  # at most this many problems per (template, number range) family

SPLITS: tuple[tuple[str, float], ...] = (
    ("warmup", 0.3),
    ("train", 0.4),
    ("eval", 0.15),
    ("test", 0.15),
)
SPLIT_NAMES, split_of = base.hash_splits(SPLITS)  # split_of(prompt): by its stable hash

# --------------------------------------------------------------------------- surface words
NAMES = (
    "Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Max", "Emma",
    "Leo", "Zoe", "Jack", "Nora", "Omar", "Ava", "Ravi", "Sara",
)  # fmt: skip
ITEMS = (
    ("apple", "apples"), ("marble", "marbles"), ("pencil", "pencils"),
    ("sticker", "stickers"), ("cookie", "cookies"), ("book", "books"),
    ("shell", "shells"), ("card", "cards"), ("stamp", "stamps"), ("toy car", "toy cars"),
)  # fmt: skip
BOXES = (("bag", "bags"), ("box", "boxes"), ("basket", "baskets"), ("jar", "jars"))
PLAIN_PHRASES = ("What is {e}?", "Calculate {e}.", "Compute {e}.", "Work out {e}.")
TIMES = "×"

#: (answer, the worked steps one per line) of a template's numbers, or None when they do not
#: make a problem (a negative or fractional step).
Solver = Callable[[tuple[int, ...]], tuple[int, list[str]] | None]
OP_NAMES = {"+": "add", "-": "sub", TIMES: "mul"}


@dataclass(frozen=True)
class Template:
    """One way of asking: ``text`` is a ``str.format`` pattern over the numbers ``a b c d``
    and the surface words ``A B C item items box boxes`` (plain arithmetic: ``{e}``, the
    expression). ``shown`` maps the enumerated numbers to the numbers asked about (a share
    problem enumerates the quotient and shows the total)."""

    id: str
    text: str
    solve: Solver
    steps: int  # arithmetic operations
    shown: Callable[[tuple[int, ...]], tuple[int, ...]] = lambda n: n


def _op(x: int, sym: str, y: int) -> tuple[int, str]:
    if sym == "/":
        return x // y, f"{x} / {y} = {x // y}"
    value = {"+": x + y, "-": x - y, TIMES: x * y}[sym]
    return value, f"{x} {sym} {y} = {value}"


def _chain(first: int, *ops: tuple[str, int]) -> tuple[int, list[str]] | None:
    """``first``, then each ``(operator, number)`` applied to the running value, left to
    right; None when a step goes negative or a division is inexact."""
    value, lines = first, []
    for sym, y in ops:
        if (sym == "-" and y > value) or (sym == "/" and (y == 0 or value % y)):
            return None
        value, line = _op(value, sym, y)
        lines.append(line)
    return value, lines


def _change(n: tuple[int, ...]) -> tuple[int, list[str]] | None:
    cost, line = _op(n[0], TIMES, n[1])
    rest = _chain(n[2], ("-", cost))
    return None if rest is None else (rest[0], [line, *rest[1]])


def _two_prices(n: tuple[int, ...]) -> tuple[int, list[str]]:
    p, line1 = _op(n[0], TIMES, n[1])
    q, line2 = _op(n[2], TIMES, n[3])
    total, line3 = _op(p, "+", q)
    return total, [line1, line2, line3]


def _plain(*syms: str) -> Template:
    """``a s1 b [s2 c]``, left to right (no ``+`` before a ``×``: precedence never matters)."""
    return Template(
        "plain-" + "-".join(OP_NAMES[s] for s in syms),
        "{e}",
        lambda n: _chain(n[0], *zip(syms, n[1:], strict=True)),
        len(syms),
    )


def _w(tid: str, text: str, solve: Solver, **kw: Any) -> Template:
    return Template(tid, text, solve, steps=kw.pop("steps", 1), **kw)


# One step.
BUY = _w("buy", "{A} has {a} {items}. Then {A} buys {b} more. How many {items} does {A} have now?", lambda n: _chain(n[0], ("+", n[1])))  # fmt: skip
FIND = _w("find", "{A} found {a} {items} on Monday and {b} {items} on Tuesday. How many {items} did {A} find in all?", lambda n: _chain(n[0], ("+", n[1])))  # fmt: skip
GIVE = _w("give", "{A} has {a} {items} and gives {b} of them to {B}. How many {items} does {A} have left?", lambda n: _chain(n[0], ("-", n[1])))  # fmt: skip
TAKE = _w("take", "There are {a} {items} in a {box}. {A} takes out {b} {items}. How many {items} are still in the {box}?", lambda n: _chain(n[0], ("-", n[1])))  # fmt: skip
MORE = _w("more", "{A} has {a} {items} and {B} has {b} {items}. How many more {items} does {A} have than {B}?", lambda n: _chain(n[0], ("-", n[1])))  # fmt: skip
GROUPS = _w("groups", "{A} has {a} {boxes} with {b} {items} in each {box}. How many {items} does {A} have?", lambda n: _chain(n[0], (TIMES, n[1])))  # fmt: skip
SHARE = _w("share", "{A} shares {a} {items} equally among {b} friends. How many {items} does each friend get?", lambda n: _chain(n[0], ("/", n[1])), shown=lambda n: (n[0] * n[1], n[1]))  # fmt: skip
PRICE = _w("price", "One {item} costs {a} dollars. How many dollars do {b} {items} cost?", lambda n: _chain(n[0], (TIMES, n[1])))  # fmt: skip
OLDER = _w("older", "{A} is {a} years old. {B} is {b} years older than {A}. How old is {B}?", lambda n: _chain(n[0], ("+", n[1])))  # fmt: skip
YOUNGER = _w("younger", "{A} is {a} years old. {B} is {b} years younger than {A}. How old is {B}?", lambda n: _chain(n[0], ("-", n[1])))  # fmt: skip
WALK = _w("walk", "{A} walks {a} km in the morning and {b} km in the afternoon. How many km does {A} walk in total?", lambda n: _chain(n[0], ("+", n[1])))  # fmt: skip
TRAIL = _w("trail", "A trail is {a} km long. {A} has walked {b} km of it. How many km are left to walk?", lambda n: _chain(n[0], ("-", n[1])))  # fmt: skip
ONE_STEP_SMALL = (BUY, FIND, GIVE, TAKE, MORE, OLDER, YOUNGER, WALK, TRAIL)

# Two steps.
BUY_GIVE = _w("buygive", "{A} has {a} {items}. {A} buys {b} more and then gives {c} to {B}. How many {items} does {A} have now?", lambda n: _chain(n[0], ("+", n[1]), ("-", n[2])), steps=2)  # fmt: skip
GROUPS_LOOSE = _w("groupsloose", "{A} has {a} {boxes} with {b} {items} in each {box}, and {c} more {items} on a shelf. How many {items} does {A} have in all?", lambda n: _chain(n[0], (TIMES, n[1]), ("+", n[2])), steps=2)  # fmt: skip
CHANGE = _w("change", "{A} buys {a} {items} at {b} dollars each and pays with {c} dollars. How many dollars of change does {A} get?", _change, steps=2)  # fmt: skip
AGE_LATER = _w("agelater", "{A} is {a} years old. {B} is {b} years older than {A}. How old will {B} be in {c} years?", lambda n: _chain(n[0], ("+", n[1]), ("+", n[2])), steps=2)  # fmt: skip
TOGETHER = _w("together", "{A} has {a} {items}. {B} has {b} more {items} than {A}. How many {items} do they have together?", lambda n: _chain(n[0], ("+", n[1]), ("+", n[0])), steps=2)  # fmt: skip
KEEP_SHARE = _w("keepshare", "{A} has {a} {items}, keeps {c} and shares the rest equally among {b} friends. How many {items} does each friend get?", lambda n: _chain(n[0], ("-", n[2]), ("/", n[1])), steps=2, shown=lambda n: (n[0] * n[1] + n[2], n[1], n[2]))  # fmt: skip
TRIP = _w("trip", "{A} drives {a} km to a lake, then {b} km to a shop, then {c} km home. How many km does {A} drive in all?", lambda n: _chain(n[0], ("+", n[1]), ("+", n[2])), steps=2)  # fmt: skip
TWO_STEP_ADD = (BUY_GIVE, AGE_LATER, TOGETHER, TRIP)

# Three steps.
DAY = _w("day", "{A} has {a} {items}. {A} buys {b} more, gives {c} to {B} and then finds {d} more. How many {items} does {A} have now?", lambda n: _chain(n[0], ("+", n[1]), ("-", n[2]), ("+", n[3])), steps=3)  # fmt: skip
AGES3 = _w("ages3", "{A} is {a} years old. {B} is {b} years older than {A}, and {C} is {c} years younger than {B}. How old will {C} be in {d} years?", lambda n: _chain(n[0], ("+", n[1]), ("-", n[2]), ("+", n[3])), steps=3)  # fmt: skip
BOXES_LEFT = _w("boxesleft", "{A} has {a} {boxes} with {b} {items} in each {box}, gives {c} {items} to {B} and buys {d} more. How many {items} does {A} have now?", lambda n: _chain(n[0], (TIMES, n[1]), ("-", n[2]), ("+", n[3])), steps=3)  # fmt: skip
TWO_PRICES = _w("twoprices", "{A} buys {a} {items} at {b} dollars each and {c} {boxes} at {d} dollars each. How many dollars does {A} spend?", _two_prices, steps=3)  # fmt: skip

D1, D2 = range(1, 10), range(2, 10)  # single digits (with and without 1)
TEENS, TWO = range(11, 20), range(11, 100)


@dataclass(frozen=True)
class Family:
    """A template with a number range per number, in one difficulty bucket."""

    name: str
    difficulty: int
    template: Template
    ranges: tuple[range, ...]


def _families() -> tuple[Family, ...]:
    out: list[Family] = []

    def add(d: int, tag: str, templates: Sequence[Template], *ranges: range) -> None:
        out.extend(Family(f"{t.id}-{tag}", d, t, tuple(ranges)) for t in templates)

    add(1, "1d", [_plain("+"), _plain("-")], range(10), range(10))
    add(1, "1d", [_plain(TIMES)], range(1, 6), range(1, 6))
    add(2, "2d1d", [_plain("+"), _plain("-")], TWO, D1)
    add(2, "table", [_plain(TIMES)], range(6, 10), D2)
    add(3, "1d", ONE_STEP_SMALL, D1, D1)
    add(3, "1d", [GROUPS, PRICE], D2, D2)
    add(3, "1d", [SHARE], D2, D2)  # quotient and divisor 2-9
    add(4, "1d", [_plain("+", "-"), _plain("-", "+"), _plain("+", "+")], D1, D1, D1)
    add(4, "1d", [_plain(TIMES, "+"), _plain(TIMES, "-")], D2, D2, D1)
    add(4, "2d", [_plain("+"), _plain("-")], TWO, TWO)
    add(5, "2d", ONE_STEP_SMALL, TWO, TWO)
    add(5, "2d", [GROUPS, PRICE], TEENS, D2)
    add(5, "2d", [SHARE], TEENS, D2)
    add(5, "1d", TWO_STEP_ADD, D1, D1, D1)
    add(5, "1d", [GROUPS_LOOSE], D2, D2, D1)
    add(5, "1d", [CHANGE], D2, D2, range(10, 101, 5))
    add(5, "1d", [KEEP_SHARE], D2, D2, D1)
    add(6, "2d", TWO_STEP_ADD, TWO, TWO, TWO)
    add(6, "2d", [GROUPS_LOOSE], TEENS, D2, TWO)
    add(6, "2d", [CHANGE], TEENS, D2, range(50, 201, 10))
    add(6, "2d", [KEEP_SHARE], TEENS, D2, TWO)
    add(6, "1d", [DAY, AGES3, BOXES_LEFT, TWO_PRICES], D2, D2, D2, D2)
    return tuple(out)


FAMILIES: tuple[Family, ...] = _families()


@dataclass(frozen=True)
class Problem:
    """One problem: its family, numbers, prompt text, answer, worked steps and bucket."""

    family: str
    numbers: tuple[int, ...]
    prompt: str
    answer: str
    steps: tuple[str, ...]  # the worked steps, one equation each
    difficulty: int

    @property
    def split(self) -> str:
        return split_of(self.prompt)

    def solution(self) -> str:
        """The worked completion: each step on its own line, then ``Answer: <n>``."""
        return "\n".join([*self.steps, f"{ANSWER_PREFIX} {self.answer}"])


def _surface(h: int) -> dict[str, str]:
    """Three different names, an item, a container and a phrasing, from a key's hash."""
    n = len(NAMES)
    i = h % n
    j = (i + 1 + (h >> 8) % (n - 1)) % n
    k = next(
        x for x in ((j + 1 + (h >> 16) % (n - 2) + d) % n for d in range(3)) if x not in (i, j)
    )
    item, items = ITEMS[(h >> 24) % len(ITEMS)]
    box, boxes = BOXES[(h >> 32) % len(BOXES)]
    phrase = PLAIN_PHRASES[(h >> 40) % len(PLAIN_PHRASES)]
    return {"A": NAMES[i], "B": NAMES[j], "C": NAMES[k], "item": item, "items": items,
            "box": box, "boxes": boxes, "phrase": phrase}  # fmt: skip


#: "1 apples" -> "1 apple" (a story's count of one; " 11 apples" is left alone).
_SINGULAR = {
    f" 1 {plural} ": f" 1 {single} "
    for single, plural in (*ITEMS, *BOXES, ("year", "years"), ("dollar", "dollars"))
}


def _singular(text: str) -> str:
    for plural, single in _SINGULAR.items():
        text = text.replace(plural, single)
    return text


def _make(fam: Family, enumerated: tuple[int, ...], h: int) -> Problem | None:
    t = fam.template
    numbers = t.shown(enumerated)
    solved = t.solve(numbers)
    if solved is None:
        return None
    value, steps = solved
    words = _surface(h)
    if t.text == "{e}":  # plain: the numbers with the steps' operators
        syms = [line.split(" ")[1] for line in steps]
        expr = " ".join(
            [str(numbers[0])] + [f"{s} {n}" for s, n in zip(syms, numbers[1:], strict=True)]
        )
        prompt = words["phrase"].format(e=expr)
    elif value == 0:  # "has 0 left" reads oddly in a story; plain 3 - 3 is fine
        return None
    else:
        text = t.text.format(**words, **dict(zip("abcd", map(str, numbers), strict=False)))
        prompt = _singular(text.replace("?", " ?").replace(".", " .").replace(",", " ,"))
        prompt = prompt.replace(" ?", "?").replace(" .", ".").replace(" ,", ",")
    return Problem(fam.name, numbers, prompt, str(value), tuple(steps), fam.difficulty)


_WALK = 1_000_003  # a prime above every family's number of tuples: the thinning's step


def _tuple_at(ranges: Sequence[range], index: int) -> tuple[int, ...]:
    """The ``index``-th tuple of the ranges' product, in lexicographic order."""
    out = []
    for r in reversed(ranges):
        index, k = divmod(index, len(r))
        out.append(r[k])
    return tuple(reversed(out))


def family_problems(fam: Family) -> list[Problem]:
    """The problems of a family: every tuple of its ranges when there are at most
    ``FAMILY_CAP``, else ``FAMILY_CAP`` tuples spread over the product (indices ``j * 1000003
    mod size``: pure integer arithmetic, the same everywhere), less those that make no problem
    (a negative step, an inexact division, a story whose answer is 0)."""
    size = 1
    for r in fam.ranges:
        size *= len(r)
    if size >= _WALK:
        raise ValueError(f"family {fam.name}: {size} tuples, more than the walk allows")
    indices = range(size) if size <= FAMILY_CAP else (j * _WALK % size for j in range(FAMILY_CAP))
    out = []
    for i in indices:
        numbers = _tuple_at(fam.ranges, i)
        p = _make(fam, numbers, stable_hash(f"{fam.name}:{','.join(map(str, numbers))}"))
        if p is not None:
            out.append(p)
    return out


@lru_cache(maxsize=1)
def _all() -> tuple[Problem, ...]:
    seen: dict[str, Problem] = {}
    for fam in FAMILIES:
        for p in family_problems(fam):
            seen.setdefault(p.prompt, p)  # one prompt, one problem (the first family's)
    return tuple(seen.values())


@lru_cache(maxsize=1)
def _by_prompt() -> dict[str, Problem]:
    return {p.prompt: p for p in _all()}


def all_problems() -> tuple[Problem, ...]:
    """Every problem, by family then numbers."""
    return _all()


def problem(prompt: str) -> Problem:
    """The problem of a prompt; ValueError if it is none of the task's."""
    p = _by_prompt().get(prompt.strip())
    if p is None:
        raise ValueError(f"not a {NAME} prompt: {prompt[:80]!r}")
    return p


def answer_of(prompt: str) -> str:
    return problem(prompt).answer


def difficulty_of(prompt: str) -> int:
    return problem(prompt).difficulty


@lru_cache(maxsize=1)
def _by_split() -> dict[str, dict[int, tuple[Problem, ...]]]:
    out: dict[str, dict[int, list[Problem]]] = {
        s: {d: [] for d in DIFFICULTIES} for s in SPLIT_NAMES
    }
    for p in _all():
        out[p.split][p.difficulty].append(p)
    return {s: {d: tuple(ps) for d, ps in by.items()} for s, by in out.items()}


def problems(split: str, difficulty: int | None = None) -> list[Problem]:
    """The problems of ``split`` (optionally of one bucket), in :func:`all_problems` order."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLIT_NAMES)}")
    by = _by_split()[split]
    wanted = DIFFICULTIES if difficulty is None else (difficulty,)
    return [p for d in wanted for p in by.get(d, ())]


def stratified(split: str, per_difficulty: int) -> list[Problem]:
    """Up to ``per_difficulty`` problems of each bucket of ``split``, lowest
    ``stable_hash(prompt + "#pick")`` first (deterministic, independent of the split hash)."""
    out: list[Problem] = []
    for d in DIFFICULTIES:
        bucket = sorted(problems(split, d), key=lambda p: stable_hash(p.prompt + "#pick"))
        out.extend(bucket[:per_difficulty])
    return out


def sample_by_difficulty(split: str, k: int, rng: random.Random) -> list[Problem]:
    """``k`` problems of ``split``: a bucket uniformly, then a problem uniformly within it."""
    buckets = [b for d in DIFFICULTIES if (b := problems(split, d))]
    return [rng.choice(rng.choice(buckets)) for _ in range(k)]


def _row(p: Problem) -> Row:
    return {"prompt": p.prompt, "answer": p.answer, "difficulty": str(p.difficulty)}


def rows(split: str) -> list[Row]:
    """The whole split as dataset rows (``prompt``, ``answer``, ``difficulty``)."""
    return [_row(p) for p in problems(split)]


def sampled_rows(split: str, size: int, seed: int) -> list[Row]:
    """``size`` rows of ``split``, difficulty-balanced (:func:`sample_by_difficulty`, seeded):
    the RL prompts (``builtin.size``, ``builtin.seed``)."""
    return [_row(p) for p in sample_by_difficulty(split, size, random.Random(seed))]


def eval_rows(prompts: int) -> list[Row]:
    """At least ``prompts`` rows of the held-out ``eval`` split (never ``test``) when it has
    that many: the same number from each bucket (the short ones hold what they have, and the
    others give more)."""
    per = -(-prompts // len(DIFFICULTIES))
    chosen = stratified("eval", per)
    total = len(problems("eval"))
    while len(chosen) < min(prompts, total):
        per += 1
        chosen = stratified("eval", per)
    return [_row(p) for p in chosen]


# --------------------------------------------------------------------------- grading
_ANSWER_LINE = re.compile(r"^[\s>#*_]*answer\s*[:：]\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"^[*_$\s]*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.0+)?)[*_$\s]*\.?[*_\s]*$")


@dataclass(frozen=True)
class Grade:
    """The grader's verdict on one completion."""

    correct: bool
    answer: str | None  # the final answer's number (commas dropped), None when there is none
    has_answer_line: bool  # an ``Answer:`` line is there (the format was followed)
    reasoning: str  # the text before the last ``Answer:`` (all of it when there is none)


def grade(prompt: str, completion: str, answer: str, *, finished: bool = True) -> Grade:
    """Grade ``completion`` (decoded text, EOS stripped) against the reference ``answer``.

    Correct iff it finished (``finished=False``: truncated at the token limit, wrong) and its
    last ``Answer:`` line is exactly the number ``answer`` (``1,234`` and a trailing period
    are tolerated; ``12 apples``, ``12.5`` or two numbers are not). ``prompt`` is not read:
    rows carry their answers.
    """
    lines = list(_ANSWER_LINE.finditer(completion))
    last = lines[-1] if lines else None
    reasoning = (
        completion[: completion.rfind(ANSWER_PREFIX)] if ANSWER_PREFIX in completion else completion
    )
    number = None
    if last is not None:
        m = _NUMBER.match(last.group(1))
        if m is not None:
            number = m.group(1).replace(",", "").split(".")[0]
    return Grade(
        correct=bool(finished and number is not None and number == answer.strip()),
        answer=number,
        has_answer_line=last is not None,
        reasoning=reasoning,
    )


def reward(prompt: str, completion: str, answer: str, *, finished: bool = True) -> float:
    """1.0 if :func:`grade` says correct, else 0.0."""
    return 1.0 if grade(prompt, completion, answer, finished=finished).correct else 0.0


# --------------------------------------------------------------------------- the chat
SYSTEM_PROMPT = (
    "You solve math problems. Work step by step, one short line per step, and end with a "
    "last line 'Answer: N', where N is the final number."
)


#: The example turns' problems, in chat order: (family, bucket), one problem each from the
#: ``warmup`` split (lowest ``stable_hash(prompt + "#example")``): a plain sum, a two-step
#: story, a one-step story, a product and a sum (the gate's few-shot candidates took 2 or 4).
EXAMPLE_PICKS: tuple[tuple[str, int], ...] = (
    ("plain-add-2d1d", 2),
    ("buygive-1d", 5),
    ("groups-1d", 3),
    ("plain-mul-add-1d", 4),
)
#: The starting point the wordmath gate chose (docs/results.md): :data:`SYSTEM_PROMPT`, no
#: example turns, a 16-step format warm-up, completions of up to 128 tokens (a worked solution
#: is 10-40 tokens; 0.2% of the gate's samples after the warm-up were truncated at 128).
EXAMPLE_TURNS = 0
WARMUP_STEPS = 16
MAX_COMPLETION_TOKENS = 128


def example_problems(k: int = EXAMPLE_TURNS) -> list[Problem]:
    """The first ``k`` example problems (:data:`EXAMPLE_PICKS`)."""
    out = []
    for family, d in EXAMPLE_PICKS[:k]:
        pool = [p for p in problems("warmup", d) if p.family == family]
        out.append(min(pool, key=lambda p: stable_hash(p.prompt + "#example")))
    return out


def example_turns(k: int = EXAMPLE_TURNS) -> list[dict[str, str]]:
    """``dataset.exampleTurns``: the example problems with their worked solutions."""
    return [{"user": p.prompt, "assistant": p.solution()} for p in example_problems(k)]


# --------------------------------------------------------------------------- the format warm-up
#: The format warm-up (``training.formatWarmupSteps``): worked solutions (the steps, then
#: ``Answer: n``) of ``warmup``-split problems, buckets uniform, ``batch`` a step, with an
#: AdamW of its own (the RL learning rate is far too small to teach a format in a few steps).
#: Also the warmed weights' cache key: bump ``version`` when its meaning changes.
WARMUP_RECIPE: dict[str, Any] = {
    "version": 1, "batch": 8, "lr": 2e-5, "betas": (0.9, 0.999), "clip": 1.0, "lr_warmup": 4,
    "seed_offset": 7,
}  # fmt: skip


def warmup_batches(steps: int, seed: int) -> list[list[tuple[str, str]]]:
    """Every warm-up batch as (prompt, completion) pairs, ``warmup`` split only."""
    rng = random.Random(seed + WARMUP_RECIPE["seed_offset"])
    batch = WARMUP_RECIPE["batch"]
    return [
        [(p.prompt, p.solution()) for p in sample_by_difficulty("warmup", batch, rng)]
        for _ in range(steps)
    ]


TASK = base.register_task(
    base.Task(
        name=NAME,
        rows=lambda src: sampled_rows("train", src.size, src.seed),
        grade=lambda prompt, completion, answer, finished: (
            grade(prompt, completion, answer, finished=finished).correct
        ),
        difficulty=difficulty_of,
        eval_rows=eval_rows,
        warmup=base.own_recipe(warmup_batches, WARMUP_RECIPE),
    )
)
