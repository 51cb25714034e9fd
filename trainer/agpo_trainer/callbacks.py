"""Rank 0's hooks into the training loop (TRL's ``TrainerCallback`` in small): the study records
its figures through them, the records file and the experiment trackers are fed by them
(:mod:`agpo_trainer.tracking`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agpo_trainer.experience import Batch
from agpo_trainer.stats import EvalStats, StepStats


class Callbacks:
    """Each default does nothing; a subclass overrides what it needs."""

    def on_batch(self, step: int, batch: Batch) -> None:
        """Step ``step + 1``'s batch is ready; the policy is still that of step ``step``."""

    def on_step(self, stats: StepStats, batch: Batch) -> None:
        """A step is finished (trained, pushed, checkpointed)."""

    def on_eval(self, result: EvalStats) -> None:
        """An evaluation is finished."""

    def on_end(self, checkpoint: Path | None) -> None:
        """The last step is done; ``checkpoint`` is the final one (None: none was written)."""


class Recording(Callbacks):
    """Callbacks that keep what they are given (tests, notebooks): every batch, step and
    evaluation, in order."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.steps: list[StepStats] = []
        self.evals: list[EvalStats] = []

    def on_batch(self, step: int, batch: Batch) -> None:
        self.batches.append(batch)

    def on_step(self, stats: StepStats, batch: Batch) -> None:
        self.steps.append(stats)

    def on_eval(self, result: EvalStats) -> None:
        self.evals.append(result)


class Chain(Callbacks):
    """Several callbacks called in order."""

    def __init__(self, parts: Sequence[Callbacks]) -> None:
        self.parts = tuple(parts)

    def on_batch(self, step: int, batch: Batch) -> None:
        for p in self.parts:
            p.on_batch(step, batch)

    def on_step(self, stats: StepStats, batch: Batch) -> None:
        for p in self.parts:
            p.on_step(stats, batch)

    def on_eval(self, result: EvalStats) -> None:
        for p in self.parts:
            p.on_eval(result)

    def on_end(self, checkpoint: Path | None) -> None:
        for p in self.parts:
            p.on_end(checkpoint)
