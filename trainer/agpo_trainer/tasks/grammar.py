"""The completion grammar the synthetic reasoning tasks share (``bitcount``, ``bitcount-copy``,
``chainsum``), and its grader. Pure Python.

    [filler][scratch "\\n"]Answer:<n>      then EOS

* filler: ``.`` repeated 0..6 times: reasoning-looking length that never helps;
* scratch: the task's worked steps (its ``scratch_for``), ended by a newline;
* ``Answer:<n>``: the answer.

"Reasoning tokens" are the characters (= tokens with the builtin byte-level tokenizer) before
``Answer:``: the grader reports them split into filler and scratch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_FILLER = 6
FILLER_CHAR = "."
ANSWER_PREFIX = "Answer:"
_ANSWER_RE = re.compile(r"Answer:(\d+)\s*$")


def make_completion(answer: str, *, scratch: str | None = None, filler: int = 0) -> str:
    """A completion in the grammar (without EOS); ``scratch`` None: a direct answer."""
    if not 0 <= filler <= MAX_FILLER:
        raise ValueError(f"filler must be 0..{MAX_FILLER}, got {filler}")
    body = FILLER_CHAR * filler + (scratch + "\n" if scratch is not None else "")
    return f"{body}{ANSWER_PREFIX}{answer}"


@dataclass(frozen=True)
class Grade:
    """The grader's verdict on one completion."""

    correct: bool
    answer: str | None  # the parsed answer, None when there is none
    reasoning_tokens: int  # characters (= tokens) before "Answer:" (all when there is none)
    filler_tokens: int  # leading filler characters
    scratch_tokens: int  # the rest of the reasoning (scratch, its newline, anything else)
    used_scratch: bool  # a non-empty reasoning part other than filler
    scratch_correct: bool | None  # the scratch equals the right one (None: no scratch)
    well_formed: bool  # the whole completion is in the grammar


def grade(completion: str, right: str, scratch: str, *, finished: bool = True) -> Grade:
    """Grade ``completion`` (decoded text, EOS stripped) against the right answer and the
    right scratch. Correct iff it finished (EOS before the token limit) and ends with
    ``Answer:<right>``; leading ``.`` are filler, the rest of what precedes ``Answer:`` is
    scratch (well-formed only when it is exactly ``scratch`` and a newline)."""
    m = _ANSWER_RE.search(completion)
    head = completion[: m.start()] if m else completion
    filler = len(head) - len(head.lstrip(FILLER_CHAR))
    scratch_text = head[filler:]
    scratch_core = scratch_text[:-1] if scratch_text.endswith("\n") else scratch_text
    used = bool(scratch_text)
    ans = m.group(1) if m else None
    scratch_ok = (scratch_core == scratch) if used else None
    well_formed = (
        m is not None
        and finished
        and filler <= MAX_FILLER
        and completion == completion.rstrip()
        and (not used or (scratch_text.endswith("\n") and bool(scratch_ok)))
    )
    return Grade(
        correct=bool(finished and ans is not None and ans == right),
        answer=ans,
        reasoning_tokens=len(head),
        filler_tokens=filler,
        scratch_tokens=len(scratch_text),
        used_scratch=used,
        scratch_correct=scratch_ok,
        well_formed=well_formed,
    )
