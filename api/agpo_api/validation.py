"""Turning YAML text into an :class:`AGPOJob`, or into one-line problems a user can act on."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from agpo_api.base import CALLABLE_PATTERN, DNS1123_LABEL, DNS1123_SUBDOMAIN, QUANTITY
from agpo_api.models import API_VERSION, KIND, AGPOJob


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document: where (``spec.a.b``) and what, with how to fix it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidJobError(ValueError):
    """A document is not a valid AGPOJob; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("; ".join(prefix + str(p) for p in problems))


# How to fix the common pydantic error types; the rest keep pydantic's own message.
_HINTS: dict[str, str] = {
    "extra_forbidden": "unknown field; check the spelling (see `agpo crd` for the schema)",
    "missing": "required field is missing",
    "int_type": "must be an integer",
    "float_type": "must be a number (write it without quotes)",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


# Patterns explained in words: a user should not have to read a regular expression.
PATTERN_HINTS: dict[str, str] = {
    CALLABLE_PATTERN: "must look like module:callable (e.g. my_rewards:score)",
    DNS1123_LABEL: "must be a DNS-1123 label (lowercase letters, digits and '-', "
    "starting and ending with a letter or digit)",
    DNS1123_SUBDOMAIN: "must be a DNS-1123 name (lowercase letters, digits, '-' and '.')",
    QUANTITY: "must be a resource quantity such as 500m, 2 or 16Gi",
}


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind == "string_pattern_mismatch":
        pattern = str((err.get("ctx") or {}).get("pattern", ""))
        if pattern in PATTERN_HINTS:
            return f"{PATTERN_HINTS[pattern]}, got {err.get('input')!r}"
    if kind == "cross_field":
        return err["msg"]
    if kind in {"missing", "extra_forbidden"}:
        return _HINTS[kind]
    hint = _HINTS.get(kind) or err["msg"][0].lower() + err["msg"][1:]
    return f"{hint}, got {err.get('input')!r}"


def _problem(err: ErrorDetails) -> Problem:
    loc: list[int | str] = [p for p in err["loc"] if not _is_union_tag(p)]
    field = (err.get("ctx") or {}).get("field", "") if err["type"] == "cross_field" else ""
    if field:
        loc.extend(str(field).split("."))
    return Problem(_path(loc), _message(err))


def _is_union_tag(part: int | str) -> bool:
    # pydantic adds the union member's name (e.g. "constrained-str") to the location.
    return isinstance(part, str) and ("[" in part or part in {"constrained-str", "function-after"})


# Spec values removed on purpose (v1alpha1 made a clean break): path, old value, what to write.
REMOVED_VALUES: tuple[tuple[str, str, str], ...] = (
    (
        "spec.algorithm.advantage",
        "agpo",
        "advantage: agpo was removed: the estimator only normalises groups with reward variance "
        "and zeroVariance alone decides the others; use preset: agpo, or advantage: grpo with "
        "zeroVariance: agpo",
    ),
)


def _lookup(data: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def migration_problems(data: Any) -> list[Problem]:
    """What an old spec must change, one :class:`Problem` per removed value it still uses."""
    return [
        Problem(path, message)
        for path, value, message in REMOVED_VALUES
        if _lookup(data, path) == value
    ]


def problems_from_error(err: ValidationError) -> list[Problem]:
    """Every error of a pydantic ValidationError as a :class:`Problem` (deduplicated)."""
    seen: dict[str, Problem] = {}
    for e in err.errors(include_url=False):
        p = _problem(e)
        seen.setdefault(str(p), p)
    return list(seen.values())


def parse_job(data: Any, source: str = "") -> AGPOJob:
    """Validate one decoded document; raise :class:`InvalidJobError` listing every problem."""
    if not isinstance(data, dict):
        raise InvalidJobError(
            [Problem("", f"expected a mapping (an {KIND}), got {type(data).__name__}")], source
        )
    wrong = []
    if data.get("apiVersion") != API_VERSION:
        wrong.append(
            Problem("apiVersion", f"must be {API_VERSION}, got {data.get('apiVersion')!r}")
        )
    if data.get("kind") != KIND:
        wrong.append(Problem("kind", f"must be {KIND}, got {data.get('kind')!r}"))
    if wrong:
        raise InvalidJobError(wrong, source)
    try:
        return AGPOJob.model_validate(data)
    except ValidationError as err:
        migrations = migration_problems(data)
        moved = {p.path for p in migrations}
        rest = [p for p in problems_from_error(err) if p.path not in moved]
        raise InvalidJobError(migrations + rest, source) from None


def iter_documents(text: str, source: str = "") -> Iterator[Any]:
    """The YAML documents of a text, skipping empty ones; malformed YAML -> InvalidJobError."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InvalidJobError([Problem("", f"malformed YAML: {where}{problem}")], source) from None
    yield from (d for d in docs if d is not None)


def load_jobs(path: str | Path) -> list[AGPOJob]:
    """Every AGPOJob in a YAML file (multi-document allowed); InvalidJobError on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise InvalidJobError([Problem("", f"cannot read file: {err.strerror}")], str(p)) from None
    jobs = [parse_job(doc, str(p)) for doc in iter_documents(text, str(p))]
    if not jobs:
        raise InvalidJobError([Problem("", f"no {KIND} document in the file")], str(p))
    return jobs


def load_job(path: str | Path) -> AGPOJob:
    """The single AGPOJob in a YAML file."""
    jobs = load_jobs(path)
    if len(jobs) != 1:
        raise InvalidJobError([Problem("", f"expected one {KIND}, found {len(jobs)}")], str(path))
    return jobs[0]


def validate_files(paths: Iterable[str | Path]) -> list[str]:
    """``FILE: spec.path: message`` lines for every problem in the files (empty when valid)."""
    lines: list[str] = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            lines.append(f"{path}: cannot read file: {err.strerror}")
            continue
        try:
            docs = list(iter_documents(text, str(path)))
        except InvalidJobError as err:
            lines.extend(f"{path}: {p}" for p in err.problems)
            continue
        if not docs:
            lines.append(f"{path}: no {KIND} document in the file")
        for i, doc in enumerate(docs):
            where = f"{path}" if len(docs) == 1 else f"{path}[{i}]"
            try:
                parse_job(doc)
            except InvalidJobError as err:
                lines.extend(f"{where}: {p}" for p in err.problems)
    return lines
