"""What a builtin task is (:class:`Task`), the registry of tasks, and the recipe of a task's
supervised format warm-up (:class:`WarmupRecipe`). Pure Python: no torch.

A task is one file under ``agpo_trainer/tasks/`` that builds a :class:`Task` and registers it
(:func:`register_task`); nothing else in the trainer names a task. The spec's
``dataset.source.builtin.task`` names come from ``agpo_api.catalog.TASKS``: a shipped task's
traits are declared there (whether it has a held-out ``eval`` split, which the spec's
evaluation defaults depend on); a task registered under a new name declares its traits and is
added to the catalog.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agpo_api.catalog import TASKS as CATALOG
from agpo_api.catalog import TaskTraits
from agpo_api.models import BuiltinSource
from agpo_trainer.registry import Registry

#: A dataset row: ``prompt`` and ``answer`` (and ``difficulty`` where the task has buckets).
Row = dict[str, str]
#: One warm-up step's batch: (prompt text as the model sees it, completion text) pairs.
WarmupBatch = list[tuple[str, str]]


def stable_hash(text: str) -> int:
    """The first 8 bytes of sha256(text, UTF-8) as a big-endian integer: the same in every
    process, machine and Python version (splits and held-out fractions are drawn by it)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def hash_splits(
    splits: Sequence[tuple[str, float]],
) -> tuple[tuple[str, ...], Callable[[str], str]]:
    """The split names and the ``split_of(prompt)`` of a task whose problem space is cut by
    :func:`stable_hash` of the prompt: ``splits`` are (name, fraction) in hash order, so
    every process, machine and Python version puts a prompt in the same split and the splits
    are disjoint by construction."""
    space = 1 << 64  # the hash prefix read as an integer in [0, 2**64)
    bounds = tuple(
        (name, round(sum(f for _, f in splits[: i + 1]) * space))
        for i, (name, _) in enumerate(splits)
    )

    def split_of(prompt: str) -> str:
        h = stable_hash(prompt)
        for name, bound in bounds:
            if h < bound:
                return name
        return splits[-1][0]  # float rounding at the very top of the range

    return tuple(name for name, _ in splits), split_of


@dataclass(frozen=True)
class WarmupInput:
    """What a task's warm-up batches may depend on."""

    steps: int
    seed: int  # training.seed
    examples: Sequence[Any]  # the RL examples (agpo_trainer.data.Example), templated
    template: str  # dataset.promptTemplate, for prompts the task draws itself


@dataclass(frozen=True)
class OwnOptimizer:
    """An AdamW of the warm-up's own (the RL optimizer and schedule stay untouched)."""

    lr: float
    betas: tuple[float, float]
    clip: float  # gradient-norm clip
    lr_warmup: int  # linear learning-rate warm-up steps


@dataclass(frozen=True)
class WarmupRecipe:
    """A task's supervised format warm-up (``training.formatWarmupSteps``): cross-entropy on
    the completion tokens of the pairs :attr:`batches` yields, one batch a step.

    ``optimizer`` None trains with the policy's optimizer and clears its moments afterwards;
    ``init_std`` re-initialises the builtin model (``builtin:tiny``) with that std first;
    ``cache_key`` (not None) caches the warmed weights under a hash of it, the steps, the
    seed, the model and the prompt format, so a second run loads them.
    """

    batches: Callable[[WarmupInput], list[WarmupBatch]]
    optimizer: OwnOptimizer | None = None
    init_std: float | None = None
    cache_key: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Task:
    """A builtin task with verifiable answers (``dataset.source.builtin.task``).

    * :attr:`rows`: the RL prompts, from its ``train`` split when it has splits;
    * :attr:`eval_rows`: at least ``n`` rows of its held-out ``eval`` split (never ``test``),
      spread over its difficulty buckets; None when it has no held-out split;
    * :attr:`grade`: whether a completion (decoded text, EOS stripped) answers a prompt, a
      truncated one (``finished=False``) being wrong;
    * :attr:`difficulty`: the difficulty bucket of a prompt;
    * :attr:`warmup`: its format warm-up, None when it has none.
    """

    name: str
    rows: Callable[[BuiltinSource], list[Row]]
    grade: Callable[[str, str, str, bool], bool]  # (prompt, completion, answer, finished)
    difficulty: Callable[[str], int]
    eval_rows: Callable[[int], list[Row]] | None = None
    warmup: WarmupRecipe | None = None


#: A task's warm-up batches of bare prompts: (steps, training.seed) -> batches.
BareBatches = Callable[[int, int], list[WarmupBatch]]


def templated(batches: BareBatches) -> Callable[[WarmupInput], list[WarmupBatch]]:
    """``batches`` with the job's ``dataset.promptTemplate`` applied to every prompt."""

    def make(inp: WarmupInput) -> list[WarmupBatch]:
        return [
            [(inp.template.format(prompt=p), c) for p, c in batch]
            for batch in batches(inp.steps, inp.seed)
        ]

    return make


def own_recipe(batches: BareBatches, recipe: Mapping[str, Any]) -> WarmupRecipe:
    """The :class:`WarmupRecipe` of a task's recipe dict: its own AdamW (``lr``, ``betas``,
    ``clip``, ``lr_warmup``), ``init_std`` when the dict has one, cached under the dict."""
    return WarmupRecipe(
        batches=templated(batches),
        optimizer=OwnOptimizer(
            lr=recipe["lr"],
            betas=recipe["betas"],
            clip=recipe["clip"],
            lr_warmup=recipe["lr_warmup"],
        ),
        init_std=recipe.get("init_std"),
        cache_key=recipe,
    )


TASKS: Registry[Task, TaskTraits] = Registry("builtin task", CATALOG)


def register_task(task: Task, *, traits: TaskTraits | None = None) -> Task:
    """Register ``task`` under ``task.name``. A shipped name takes its traits from
    ``agpo_api.catalog.TASKS``; a new one gives ``traits`` (``TaskTraits(eval_split=...)``,
    which must agree with :attr:`Task.eval_rows`)."""
    declared = traits if traits is not None else CATALOG.traits(task.name)
    if declared.eval_split != (task.eval_rows is not None):
        raise ValueError(f"task {task.name!r}: its eval_split trait and eval_rows disagree")
    return TASKS.register(task.name, traits=traits)(task)


def get_task(name: str) -> Task:
    """The task registered as ``name`` (ValueError listing the valid names)."""
    return TASKS.get(name)
