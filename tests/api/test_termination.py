"""The trainer's termination message: one writer, one parser (agpo_api.termination)."""

from __future__ import annotations

import json

import pytest

from agpo_api.termination import (
    MAX_MESSAGE_BYTES,
    ExitCode,
    FailureKind,
    format_success,
    format_termination,
    last_line,
    parse_termination,
)


@pytest.mark.parametrize("kind", list(FailureKind))
def test_a_failure_line_round_trips(kind: FailureKind) -> None:
    line = format_termination(kind, "dataset row 17:\n  no 'prompt' field")
    assert line == f"{kind.value}: dataset row 17: no 'prompt' field\n"
    parsed = parse_termination(line)
    assert parsed is not None and parsed.kind == kind
    assert parsed.reason == "dataset row 17: no 'prompt' field"
    assert parsed.permanent == (kind == FailureKind.PERMANENT)


def test_the_last_contract_line_of_a_log_tail_counts() -> None:
    tail = "step 3 ...\ntransient: first\nTraceback\npermanent: reward module x does not import\n"
    parsed = parse_termination(tail)
    assert parsed is not None and parsed.permanent and parsed.reason.startswith("reward module")


@pytest.mark.parametrize("message", [None, "", "Traceback (most recent call last):\nOOM", "x: y"])
def test_no_contract_line_is_unclassified(message: str | None) -> None:
    assert parse_termination(message) is None


def test_success_carries_the_final_progress() -> None:
    line = format_success({"step": 80, "rewardMean": 0.9, "prompts": list(range(5000))})
    assert len(line.encode()) <= MAX_MESSAGE_BYTES and "prompts" not in line
    parsed = parse_termination(line)
    assert parsed is not None and parsed.kind is None
    assert dict(parsed.progress) == {"step": 80, "rewardMean": 0.9}
    assert json.loads(line.split(": ", 1)[1]) == {"rewardMean": 0.9, "step": 80}


def test_long_reasons_are_cut_and_exit_codes_are_sysexits() -> None:
    parsed = parse_termination(format_termination(FailureKind.TRANSIENT, "x" * 5000))
    assert parsed is not None and len(parsed.reason) == 512 and parsed.reason.endswith("...")
    assert (ExitCode.PERMANENT, ExitCode.TRANSIENT) == (78, 75)
    assert last_line("a\nb\n\n") == "b"
