"""What ``agpo run`` shows: console lines, a progress bar fed by the trainer's ``/status``, and
the summary at the end. Nothing here starts or stops a process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from agpo_api.layout import STATUS_PATH
from agpo_api.progress import TrainerProgress

if TYPE_CHECKING:  # rich is imported when a bar is drawn, not by whoever imports this module
    from rich.console import Console


def say(console: Console, line: str) -> None:
    """One console line, printed as it is: a reason may hold brackets rich would read as
    markup (``[/__w/pytorch/...]`` in a gloo error)."""
    console.print(line, markup=False, highlight=False)


def read_status(port: int) -> TrainerProgress | None:
    """The trainer's ``/status``, or None while it is not serving (yet)."""
    try:
        data = requests.get(f"http://127.0.0.1:{port}{STATUS_PATH}", timeout=1).json()
        return TrainerProgress.model_validate(data)
    except (requests.RequestException, ValueError):  # pydantic's ValidationError included
        return None


def step_info(status: TrainerProgress) -> str:
    """The figures next to the bar: the last step's, and the latest evaluation's."""
    return (
        f"reward {status.reward_mean or 0:.3f}  "
        f"acc {status.accuracy or 0:.2f}  "
        f"tokens {status.completion_tokens_mean or 0:.1f}  "
        f"step {status.step_seconds or 0:.2f}s"
        + (
            f"  eval {status.eval_accuracy:.2f} (step {status.eval_step})"
            if status.eval_accuracy is not None
            else ""
        )
    )


class StepBar:
    """The run's progress bar: steps done of ``total``, with :func:`step_info`. Used as a
    context manager (the bar is drawn live until it is left)."""

    def __init__(self, console: Console, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self._total = total
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
        )  # fmt: skip
        self._task = self._progress.add_task("AGPO", total=total, info="waiting for the first step")

    def __enter__(self) -> StepBar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def show(self, status: TrainerProgress | None) -> None:
        """Move the bar to ``status``'s step (nothing before the first step is done)."""
        if status and status.step:
            self._progress.update(self._task, completed=status.step, info=step_info(status))

    def finish(self) -> None:
        """Fill the bar: the last step may end between two polls of ``/status``."""
        self._progress.update(self._task, completed=self._total)


def eval_summary(progress: TrainerProgress | None) -> str:
    """The final evaluation's figures as summary lines (empty without an evaluation)."""
    if progress is None or progress.eval_accuracy is None:
        return ""
    parts = [f"greedy accuracy {progress.eval_accuracy:.3f}"]
    if progress.eval_mean_at_k is not None and progress.eval_pass_at_k is not None:
        parts.append(f"mean@k {progress.eval_mean_at_k:.3f}, pass@k {progress.eval_pass_at_k:.3f}")
    if progress.eval_reasoning_tokens is not None:
        parts.append(f"reasoning tokens (correct) {progress.eval_reasoning_tokens:.1f}")
    return f"  evaluation (step {progress.eval_step}): {'; '.join(parts)}\n"


def done_summary(
    total: int, final: TrainerProgress | None, *, workdir: Path, metrics_port: int
) -> str:
    """The lines a successful run ends with: steps, the final evaluation, where things are."""
    return (
        f"done: {total} steps.\n{eval_summary(final)}  checkpoints: {workdir / 'checkpoints'}\n"
        f"  logs: {workdir / 'logs'}\n"
        f"  metrics were served on http://127.0.0.1:{metrics_port}/metrics while running"
    )
