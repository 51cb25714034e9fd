"""A run's records: what rank 0 writes to ``records.jsonl`` on the checkpoint volume, and the one
reader of that file (``agpo report``, the trackers' tests, the study).

One JSON object per line, each with a ``kind``:

* ``run``: written when the trainer starts (again after each restart): the job's name, the
  resolved spec (every default applied, :meth:`agpo_api.resolved.ResolvedSpec.to_dict`) and
  the versions of the parts that ran it;
* ``step``: every figure of a finished step, one key per ``step``/``rollout``/``update`` row of
  the metrics table (:mod:`agpo_api.metrics_table`) by its wire name (``rewardMean``), plus
  ``prompts`` (the step's dataset indices);
* ``eval``: every ``eval`` row's figure (``evalAccuracy``, ...) plus ``step``,
  ``policyVersion``, ``prompts`` (how many) and ``samples`` (k).

The file is appended to, so a run resumed from a checkpoint repeats the steps after that
checkpoint: :func:`read_records` keeps the last record of each step (what the finished run
trained). Pure: json and pathlib only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

#: The file's name, in the trainer's checkpoint directory (``/checkpoints`` in the pods).
RECORDS_FILE = "records.jsonl"

Kind = Literal["run", "step", "eval"]
KINDS: tuple[Kind, ...] = ("run", "step", "eval")


class RecordsError(ValueError):
    """The records file is missing, empty or not what the trainer writes (one line each)."""


@dataclass(frozen=True)
class RunRecords:
    """A run's records, each kind in step order, a repeated step's last record kept."""

    path: Path
    run: dict[str, Any] | None  # the latest ``run`` header (None: the file has none)
    steps: list[dict[str, Any]]
    evals: list[dict[str, Any]]


def record_line(kind: Kind, data: dict[str, Any]) -> str:
    """One line of the file (without the newline): ``data`` with its ``kind`` first."""
    return json.dumps({"kind": kind, **data}, allow_nan=True)


def find_records(where: Path) -> Path:
    """The records file of ``where``: the file itself, a checkpoint directory holding it, or
    the work directory of ``agpo run`` (``<workdir>/checkpoints/records.jsonl``)."""
    if where.is_file():
        return where
    for candidate in (where / RECORDS_FILE, where / "checkpoints" / RECORDS_FILE):
        if candidate.is_file():
            return candidate
    if not where.exists():
        raise RecordsError(f"{where} does not exist: give a run directory or its {RECORDS_FILE}")
    raise RecordsError(
        f"{where} holds no {RECORDS_FILE} (looked in {where} and {where / 'checkpoints'}): "
        "give the work directory of `agpo run` or the checkpoint directory of a job"
    )


def read_records(path: Path) -> RunRecords:
    """Read a records file; one clear :class:`RecordsError` line for anything unreadable."""
    try:
        text = path.read_text()
    except OSError as e:
        raise RecordsError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise RecordsError(
            f"{path} is not text (a binary file?): give a run directory or its {RECORDS_FILE}"
        ) from None
    run: dict[str, Any] | None = None
    by_kind: dict[str, dict[int, dict[str, Any]]] = {"step": {}, "eval": {}}
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    for n, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            # The trainer was killed mid-write: a cut last line is not worth failing over.
            if n == lines[-1][0]:
                break
            raise RecordsError(f"{path} line {n} is not JSON ({e.msg}): remove the line") from None
        kind = record.get("kind") if isinstance(record, dict) else None
        if kind not in KINDS:
            raise RecordsError(
                f"{path} line {n} has no kind run, step or eval: it is not a records file "
                "the trainer wrote"
            )
        if kind == "run":
            run = record
            continue
        if not isinstance(record.get("step"), int):
            raise RecordsError(f"{path} line {n}: a {kind} record without an integer 'step'")
        by_kind[kind][record["step"]] = record
    if not by_kind["step"] and not by_kind["eval"]:
        raise RecordsError(
            f"{path} has no step or eval record: the run did not finish a step yet "
            "(wait for the first step, or check the trainer's log)"
        )
    return RunRecords(
        path=path,
        run=run,
        steps=[by_kind["step"][s] for s in sorted(by_kind["step"])],
        evals=[by_kind["eval"][s] for s in sorted(by_kind["eval"])],
    )


#: An evaluation's keys that are not an ``eval`` row's: renamed with the prefix in
#: :func:`figures`, so that a step's and an evaluation's figures never share a name.
_EVAL_CONTEXT = ("policyVersion", "prompts", "samples")


def figures(kind: Kind, record: dict[str, Any]) -> dict[str, float]:
    """A step or eval record's numbers as flat ``name -> value`` (what the trackers log at the
    record's step): a labelled figure becomes one name per label (``rewardComponentMean/
    accuracy``), an unset one (None) is left out, and so are ``kind``, ``step`` and the prompts'
    indices; an evaluation's context gets the ``eval`` prefix (``evalPolicyVersion``)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("kind", "step") or (kind == "step" and key == "prompts"):
            continue
        name = f"eval{key[0].upper()}{key[1:]}" if kind == "eval" and key in _EVAL_CONTEXT else key
        if isinstance(value, dict):
            out |= {f"{name}/{label}": float(v) for label, v in value.items() if v is not None}
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested JSON data (the resolved spec) as ``a.b.c -> text``: a tracker's run params."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flat_params(value, f"{name}.")
        else:
            out[name] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return out
