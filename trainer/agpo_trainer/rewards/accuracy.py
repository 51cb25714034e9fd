"""Rule-based rewards: ``accuracy`` (answer verification) and ``format``.

Answer extraction (:func:`extract_answer`) takes, in order:

1. the content of the *last* ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced;
2. else the text after the last line starting with ``Answer:`` / ``Final answer:``
   (case-insensitive, markdown ``**``/``#`` decorations allowed);
3. else a trailing ``Answer:<value>`` after anything on its line (the builtin bitcount
   task's ``..Answer:3``: filler before the marker).

``accuracy`` (1.0/0.0): the extracted answer is compared with the reference answer (itself
extracted from ``\\boxed{}`` or a GSM8K ``#### x`` line when present):

* equal after normalisation (whitespace, ``$``, trailing period, thousands separators, case)
  or numerically equal -> 1.0;
* a plain-text reference (letters/spaces only, e.g. ``Paris``, ``yes``) is decided by that
  exact match alone -- math-verify would read ``Paris`` as the product ``P*a*r*i*s``;
* otherwise ``math_verify.verify(parse(gold), parse(pred))`` decides (fractions, LaTeX,
  symbolic equality, intervals...). math-verify bounds each step with a 5 s ``signal.alarm``
  timeout, which only works in the main thread; elsewhere it runs without a timeout.
  Without math-verify installed only the exact/numeric match is used (a warning says so).

``format`` (1.0/0.0): 1 when :func:`extract_answer` finds a final answer, i.e. the completion
ends its reasoning with a ``\\boxed{}`` answer or an ``Answer:`` line; 0 otherwise.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from agpo_trainer.rewards.base import register_reward

logger = logging.getLogger(__name__)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LINE = re.compile(
    r"^[\s>#*_]*(?:final\s+answer|answer)\s*[:：]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE
)
_TRAILING_ANSWER = re.compile(r"Answer:\s*([^\s:]+)\s*$")
_GSM8K = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_PLAIN_TEXT = re.compile(r"[A-Za-z][A-Za-z '\-]*[A-Za-z]")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\{(.*)\}$")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    matches = list(_BOXED.finditer(text))
    for m in reversed(matches):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    content = text[start:i].strip()
                    if content:
                        return content
                    break
    return None


def _clean(answer: str) -> str:
    """Strip markdown bold and surrounding ``$`` / trailing period from an answer line."""
    s = answer.strip().strip("*").strip().rstrip(".").strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s.strip("$").strip()
    return s.rstrip(".").strip()


# A completion that is nothing but a short answer ("7", "-3.5", "yes"): short-answer tasks
# such as the builtin arithmetic one, where the model answers without any markup.
_BARE_ANSWER = re.compile(r"^[-+]?[A-Za-z0-9.,/]{1,32}$")


def extract_answer(completion: str, *, bare: bool = True) -> str | None:
    """Final answer of a completion: last ``\\boxed{}`` content, else last ``Answer:`` line,
    else the whole completion when it is a bare short answer (``7``, ``-3.5``)."""
    boxed = _last_boxed(completion)
    if boxed is not None:
        return boxed
    lines = _ANSWER_LINE.findall(completion)
    if lines:
        answer = _clean(lines[-1])
        inner = _last_boxed(answer)
        answer = inner if inner is not None else answer
        return answer or None
    trailing = _TRAILING_ANSWER.search(completion)
    if trailing is not None:
        return _clean(trailing.group(1)) or None
    text = completion.strip()
    return text if bare and _BARE_ANSWER.fullmatch(text) else None


def reference_answer(answer: str) -> str:
    """Reference answer text: ``\\boxed{}`` content, GSM8K ``#### x``, else the whole string."""
    text = str(answer)
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    gsm = _GSM8K.findall(text)
    if gsm:
        return _clean(gsm[-1])
    return _clean(text)


def normalize_answer(answer: str) -> str:
    """Canonical string for exact matching (whitespace, ``$``, ``\\text{}``, case, commas)."""
    s = _clean(answer)
    m = _TEXT_WRAPPER.match(s)
    if m:
        s = m.group(1)
    s = s.replace("\\!", "").replace("\\left", "").replace("\\right", "")
    s = "".join(s.split()).lower()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s


def _as_float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _exact_match(pred: str, gold: str) -> bool:
    p, g = normalize_answer(pred), normalize_answer(gold)
    if p == g and p:
        return True
    pf, gf = _as_float(p), _as_float(g)
    return pf is not None and gf is not None and math.isclose(pf, gf, rel_tol=1e-9, abs_tol=0.0)


@functools.cache
def _math_verify() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """(parse, verify) from math-verify, or None (with a one-time warning) if not installed."""
    try:
        from math_verify import parse, verify
    except ImportError:
        warnings.warn(
            "math-verify is not installed (pip install 'agpo[trainer]'); the accuracy reward "
            "falls back to exact/numeric matching",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return parse, verify


def _math_equal(pred: str, gold: str) -> bool:
    mv = _math_verify()
    if mv is None:
        return False
    parse, verify = mv
    # signal.alarm() timeouts only work in the main thread (math-verify raises elsewhere).
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
        pred_parsed = parse(f"${pred}$", parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # a grader bug must not kill a training step; count it as wrong
        logger.debug("math-verify failed on pred=%r gold=%r", pred, gold, exc_info=True)
        return False


def answer_is_correct(completion: str, answer: str) -> bool:
    """Whether ``completion``'s extracted final answer matches the reference ``answer``."""
    pred = extract_answer(completion)
    gold = reference_answer(answer)
    if pred is None or not gold:
        return False
    if _exact_match(pred, gold):
        return True
    if _PLAIN_TEXT.fullmatch(gold.strip()):
        return False
    return _math_equal(pred, gold)


@register_reward("accuracy")
def accuracy_reward(
    prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]
) -> list[float]:
    """1.0 where the completion's final answer matches the reference answer, else 0.0."""
    return [
        1.0 if answer_is_correct(c, a) else 0.0 for c, a in zip(completions, answers, strict=True)
    ]


@register_reward("format")
def format_reward(
    prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]
) -> list[float]:
    """1.0 where the completion has an extractable final answer (``\\boxed{}``/``Answer:``)."""
    return [1.0 if extract_answer(c, bare=False) is not None else 0.0 for c in completions]
