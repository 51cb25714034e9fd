"""Builtin tasks with verifiable answers (pure Python, no torch), one file each, registered by
name (:func:`register_task`; :func:`get_task` looks one up). See :mod:`agpo_trainer.tasks.base`
for what a task provides, ``arithmetic``, ``bitcount``, ``bitcount_copy``, ``chainsum`` and ``wordmath`` for the shipped ones.
"""

from agpo_trainer.tasks import arithmetic, bitcount, bitcount_copy, chainsum, grammar, wordmath
from agpo_trainer.tasks.base import (
    TASKS,
    OwnOptimizer,
    Row,
    Task,
    WarmupBatch,
    WarmupInput,
    WarmupRecipe,
    get_task,
    register_task,
    stable_hash,
)

__all__ = [
    "TASKS",
    "OwnOptimizer",
    "Row",
    "Task",
    "WarmupBatch",
    "WarmupInput",
    "WarmupRecipe",
    "arithmetic",
    "bitcount",
    "bitcount_copy",
    "chainsum",
    "get_task",
    "grammar",
    "register_task",
    "stable_hash",
    "wordmath",
]
