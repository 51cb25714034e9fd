"""Prompts with verifiable answers: builtin tasks (:mod:`agpo_trainer.tasks`), JSONL/Parquet
files, ``datasets`` paths.

Rows become :class:`Example` (prompt text + reference answer). A bad row (missing field, empty
prompt) is reported with its row number; ``dataset.badRows`` decides whether it stops the job
or is skipped with a warning, never silently. :class:`PromptSampler` gives a seeded,
reproducible order whose cursor is saved in checkpoints.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agpo_api.layout import DATA_DIR
from agpo_api.models import BuiltinSource, DatasetSpec
from agpo_trainer.tasks import get_task, stable_hash

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The dataset cannot be used; the message names the file, row and field."""


@dataclass(frozen=True)
class Example:
    """One prompt: its index in the dataset, the formatted prompt, and the reference answer."""

    index: int
    prompt: str
    answer: str


# --------------------------------------------------------------------------- builtin tasks
def builtin_eval_rows(src: BuiltinSource, prompts: int) -> list[dict[str, str]]:
    """At least ``prompts`` rows of the builtin task's held-out ``eval`` split (never
    ``test``), spread over its difficulty buckets (:attr:`Task.eval_rows`)."""
    task = get_task(src.task)
    if task.eval_rows is None:
        raise DataError(f"builtin task {src.task!r} has no held-out split")
    return task.eval_rows(prompts)


# --------------------------------------------------------------------------- held-out rows
_HOLDOUT_SALT = "#agpo-holdout"


def in_holdout(prompt: str, fraction: float) -> bool:
    """Whether a prompt belongs to the held-out ``fraction`` (``evaluation.source.fraction``):
    by a stable hash (sha256) of its text, the same in every process and on every machine."""
    return stable_hash(prompt + _HOLDOUT_SALT) < fraction * (1 << 64)


def split_holdout(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(training rows, held-out rows): the one function both sides use, so the training data
    never holds an evaluation prompt. Examples keep their dataset indices."""
    train = [e for e in examples if not in_holdout(e.prompt, fraction)]
    held = [e for e in examples if in_holdout(e.prompt, fraction)]
    if not train:
        raise DataError(f"evaluation.source.fraction {fraction} leaves no training rows")
    return train, held


# --------------------------------------------------------------------------- loading
def _datasets() -> Any:
    import datasets  # heavy; only for parquet and hf sources

    datasets.disable_progress_bars()
    return datasets


def _load_rows(
    spec: DatasetSpec, base_dir: Path | None, dataset_path: str | None
) -> tuple[list[Any], str, int]:
    """Raw rows, a name for messages, and the number of the first row (1 for files)."""
    src = spec.source
    if src.builtin is not None:
        task = get_task(src.builtin.task)
        return task.rows(src.builtin), f"builtin:{src.builtin.task}", 0
    if src.file is not None:
        rel = src.file.path if src.file.path is not None else src.file.sub_path
        path = Path(rel or "")
        if src.file.pvc is not None:
            # The operator mounts the dataset PVC and says where (AGPO_DATASET_PATH).
            path = Path(dataset_path or Path(DATA_DIR) / path)
        elif not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise DataError(f"dataset file {path} does not exist (spec.dataset.source.file)")
        if src.file.format == "jsonl":
            return read_jsonl(path, spec.bad_rows), str(path), 1
        datasets = _datasets()
        try:
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        except Exception as err:  # datasets raises many types; all mean "unreadable file"
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"cannot read {path} as {src.file.format}: {first}") from None
        return list(ds), str(path), 1
    assert src.hf is not None
    datasets = _datasets()
    try:
        ds = datasets.load_dataset(src.hf.name, src.hf.config, split=src.hf.split)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot load dataset {src.hf.name!r}: {first}") from None
    return list(ds), src.hf.name, 0


class _Skipped:
    """A JSONL line that is not JSON, kept in place so the rows keep their line numbers."""


def read_jsonl(path: Path, bad_rows: str = "fail") -> list[Any]:
    """The rows of a JSONL file, row *n* = line *n* (blank lines are skipped but counted).

    Read here rather than by ``datasets``: its errors name neither the line (``Expected object
    or value at position 27``) nor an empty file (``StopIteration``).
    """
    rows: list[Any] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                rows.append(_BLANK)
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                where = f"line {number} is not valid JSON ({err.msg} at column {err.colno})"
                if bad_rows == "fail":
                    raise DataError(
                        f"cannot read {path} as jsonl: {where} "
                        "(fix the line or set spec.dataset.badRows: skip)"
                    ) from None
                log.warning("skipping %s: %s", path, where)
                rows.append(_Skipped())
    if not any(row is not _BLANK for row in rows):
        raise DataError(
            f"cannot read {path} as jsonl: the file has no rows (it is empty); add one JSON "
            "object per line"
        )
    return rows


_BLANK = object()  # a blank line: no row, but it keeps the numbering


def row_problem(row: Any, prompt_field: str, answer_field: str) -> str | None:
    """Why a row cannot be used, or None when it is fine."""
    if not isinstance(row, dict):
        return "is not a mapping"
    for name in (prompt_field, answer_field):
        if row.get(name) is None:
            return f"has no field {name!r}"
    if not str(row[prompt_field]).strip():
        return f"has an empty {prompt_field!r}"
    return None


def load_examples(
    spec: DatasetSpec, base_dir: Path | None = None, *, dataset_path: str | None = None
) -> list[Example]:
    """The dataset as examples; raises :class:`DataError` on a bad row when badRows is fail.

    ``base_dir`` anchors relative file paths; ``dataset_path`` is where the operator mounted a
    PVC's file (``TrainerSettings.dataset_path``, i.e. ``AGPO_DATASET_PATH``).
    """
    rows, name, first = _load_rows(spec, base_dir, dataset_path)
    examples: list[Example] = []
    skipped = 0
    for i, row in enumerate(rows):
        if row is _BLANK:
            continue
        if isinstance(row, _Skipped):  # already reported by read_jsonl
            skipped += 1
            continue
        problem = row_problem(row, spec.prompt_field, spec.answer_field)
        if problem is not None:
            where = f"{name}: row {i + first} {problem}"
            if spec.bad_rows == "fail":
                raise DataError(f"{where} (fix the row or set spec.dataset.badRows: skip)")
            log.warning("skipping %s", where)
            skipped += 1
            continue
        prompt = apply_template(spec.prompt_template, str(row[spec.prompt_field]))
        examples.append(Example(len(examples), prompt, str(row[spec.answer_field]).strip()))
    if not examples:
        raise DataError(f"{name}: no usable rows ({skipped} skipped)")
    return examples


def apply_template(template: str, prompt: str) -> str:
    """``spec.dataset.promptTemplate`` with the row's prompt; :class:`DataError` naming the
    field for a placeholder other than ``{prompt}`` (a traceback's ``KeyError`` otherwise)."""
    try:
        return template.format(prompt=prompt)
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(
            f"spec.dataset.promptTemplate {template!r} cannot be filled ({type(err).__name__}: "
            f"{err}); its only placeholder is {{prompt}} (write literal braces as {{{{ }}}})"
        ) from None


def check_prompts_fit(
    examples: list[Example], encode: Callable[[str], list[int]], limit: int
) -> None:
    """Raise :class:`DataError` unless at least one prompt encodes to ``limit`` tokens or
    fewer: the prompt draw skips longer ones, and with none left it could only spin.

    Stops at the first prompt that fits, so a usable dataset costs one or a few encodings.
    """
    shortest: int | None = None
    for e in examples:
        n = len(encode(e.prompt))
        if n <= limit:
            return
        shortest = n if shortest is None else min(shortest, n)
    raise DataError(
        f"no prompt fits spec.training.maxPromptTokens={limit}: the shortest of the "
        f"{len(examples)} prompts is {shortest} tokens (template and system prompt included); "
        "raise maxPromptTokens (and rollout.maxModelLen) or shorten the prompts"
    )


class PromptSampler:
    """Seeded epochs over the examples; ``state_dict`` is the cursor saved in checkpoints."""

    def __init__(self, examples: list[Example], seed: int) -> None:
        self.examples = examples
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[Example]:
        """The next ``n`` examples, wrapping into a new shuffled epoch when needed."""
        out: list[Example] = []
        while len(out) < n:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            out.append(self.examples[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = state["seed"]
        self.epoch = state["epoch"]
        self.position = state["position"]
        self._order = self._permutation(self.epoch)
