"""How a trainer process says why it stopped, and how the operator reads it.

A failure is one of two kinds (:class:`FailureKind`):

* **permanent** -- the spec or the data can never work (a bad dataset row with
  ``badRows: fail``, a reward module that does not import, a model that does not exist):
  retrying costs GPU hours and ends the same way. The operator fails the job at once
  (``Failed``, reason ``PermanentFailure``) without spending ``backoffLimit``.
* **transient** -- everything else (OOM, a lost node, NCCL timeouts, a vLLM server that went
  away): the group restarts from its newest checkpoint, within ``backoffLimit``.

The trainer writes **one line** to :data:`TERMINATION_LOG` before it exits
(:func:`format_termination`): ``permanent: <reason>`` or ``transient: <reason>``; on success
it may write ``succeeded: <JSON>``, its last ``/status`` object (:func:`format_success`), so
that the CR's final step and reward are the trainer's last ones even though nobody can poll a
process that has exited. The kubelet copies the file into the container's
``state.terminated.message`` (at most 4096 bytes); trainer pods use
``terminationMessagePolicy: FallbackToLogsOnError``, so a process that dies without writing
it (a segfault, an OOM kill) still leaves the tail of its log there. The operator parses the
message with :func:`parse_termination`; no recognised line means transient.

Why the message and not the exit code: torchrun's elastic agent replaces a worker's exit code
by its own. Observed with torch 2.13.0 (``python -m torch.distributed.run --standalone
--nproc-per-node=1 exit3.py``, a worker that writes a line to a file and exits with 3):
torchrun exits with **1**, logging ``ChildFailedError ... exitcode : 3`` on stderr; the file
the worker wrote is left as it was. So the pod's exit code is torchrun's 1 whatever the
cause, and only the termination message carries the kind. :class:`ExitCode` is for processes
run without torchrun (``agpo run``, a single-process trainer): sysexits' ``EX_CONFIG`` for
permanent and ``EX_TEMPFAIL`` for transient failures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

#: Where a container's termination message is read from (the kubelet's default path).
TERMINATION_LOG = "/dev/termination-log"
#: The kubelet keeps at most this many bytes of a container's termination message.
MAX_MESSAGE_BYTES = 4096
#: A reason longer than this is cut (conditions and Events stay readable).
MAX_REASON_CHARS = 512


class FailureKind(StrEnum):
    """What a failure means for the job (see the module docstring)."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"


class ExitCode(IntEnum):
    """Exit codes for a trainer run without torchrun (torchrun replaces them by its own 1)."""

    OK = 0
    PERMANENT = 78  # sysexits EX_CONFIG: the configuration (spec, data, code) is wrong
    TRANSIENT = 75  # sysexits EX_TEMPFAIL: try again later


#: The kind of the ``succeeded:`` line (not a failure).
SUCCEEDED = "succeeded"


@dataclass(frozen=True)
class Termination:
    """A parsed termination message: a failure's kind and reason, or a success's progress."""

    kind: FailureKind | None  # None: the process succeeded
    reason: str = ""
    progress: Mapping[str, Any] = field(default_factory=dict)

    @property
    def permanent(self) -> bool:
        return self.kind == FailureKind.PERMANENT


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


def format_termination(kind: FailureKind, reason: str) -> str:
    """The line a failing trainer writes to :data:`TERMINATION_LOG`."""
    return f"{FailureKind(kind).value}: {_one_line(reason) or 'no reason given'}\n"


def format_success(progress: Mapping[str, Any]) -> str:
    """The line a succeeding trainer writes: its last ``/status`` object, compact JSON; the
    per-prompt ``prompts`` list is left out (the message must fit 4096 bytes)."""
    data = {k: v for k, v in progress.items() if k != "prompts"}
    line = f"{SUCCEEDED}: {json.dumps(data, separators=(',', ':'), sort_keys=True)}\n"
    if len(line.encode()) > MAX_MESSAGE_BYTES:
        raise ValueError(f"the final progress is longer than {MAX_MESSAGE_BYTES} bytes")
    return line


def parse_termination(message: str | None) -> Termination | None:
    """The last contract line of a termination message; None when there is none (a log tail
    from ``FallbackToLogsOnError``, an empty message)."""
    for raw in reversed((message or "").splitlines()):
        head, sep, rest = raw.strip().partition(":")
        if not sep:
            continue
        head, rest = head.strip().lower(), rest.strip()
        if head in (FailureKind.PERMANENT, FailureKind.TRANSIENT):
            return Termination(FailureKind(head), _one_line(rest))
        if head == SUCCEEDED:
            try:
                data = json.loads(rest)
            except ValueError:
                data = None
            return Termination(None, progress=data if isinstance(data, dict) else {})
    return None


def last_line(message: str | None) -> str:
    """The last non-empty line of a message (a log tail's most telling line), one line."""
    lines = [line for line in (message or "").splitlines() if line.strip()]
    return _one_line(lines[-1]) if lines else ""
