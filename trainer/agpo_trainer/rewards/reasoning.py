"""Reasoning tokens: the tokens of a completion before its answer.

One definition for evaluation (``agpo_eval_reasoning_tokens``) and for the length reward
with ``lengthReward.target: reasoning``: the tokens before the *last* answer marker
(``evaluation.answerMarker``, default ``Answer:``) or the last ``</think>`` (thinking
models), whichever comes later; a completion with neither is reasoning through and through
(it never gave an answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

THINK_END = "</think>"


def reasoning_text(text: str, marker: str) -> str:
    """The part of ``text`` before the last ``marker`` or ``</think>`` (all of it when it has
    neither)."""
    cut = max(text.rfind(marker), text.rfind(THINK_END))
    return text[:cut] if cut >= 0 else text


def reasoning_tokens(tokenizer: Any, text: str, marker: str) -> int:
    """Tokens of :func:`reasoning_text`, counted with the policy's tokenizer."""
    head = reasoning_text(text, marker)
    return len(tokenizer.encode(head, add_special_tokens=False)) if head else 0


def reasoning_lengths(tokenizer: Any, texts: Sequence[str], marker: str) -> list[int]:
    """:func:`reasoning_tokens` of every completion."""
    return [reasoning_tokens(tokenizer, t, marker) for t in texts]
