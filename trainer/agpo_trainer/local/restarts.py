"""``agpo run``'s restart policy, the operator's: trainer groups and vLLM servers started again
count against one ``runPolicy.backoffLimit``, and a (re)started trainer resumes from the newest
checkpoint. Whether a failure is restarted at all (not a ``permanent:`` one) is the caller's
reading of the termination log (:meth:`agpo_trainer.local.trainer_group.TrainerGroup.failed_permanently`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agpo_trainer.local.console import say
from agpo_trainer.preflight import LaunchError

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class Restarts:
    """The launcher's share of ``runPolicy.backoffLimit``: trainer groups and servers
    started again, counted together as the operator counts them."""

    limit: int
    used: int = 0

    def take(self, what: str, console: Console) -> None:
        """Count one restart of ``what``, or raise when the limit is spent."""
        if self.used >= self.limit:
            raise LaunchError(f"{what}; runPolicy.backoffLimit={self.limit} restarts spent")
        self.used += 1
        say(console, f"agpo run: {what}; restart {self.used} of {self.limit}")


def start_over(checkpoints: Path, *, fresh: bool, resume: bool) -> str:
    """What this run starts from, as a line for the console; with ``fresh``, the old
    checkpoints are moved aside (never deleted: they may be all that is left of a long run)."""
    # Lazily: checkpoint imports torch, which whoever imports this module may not need.
    from agpo_trainer.checkpoint import checkpoint_step, latest_checkpoint

    newest = latest_checkpoint(checkpoints)
    if fresh and checkpoints.exists():
        aside = checkpoints.with_name(f"{checkpoints.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        checkpoints.rename(aside)
        return (
            f"--fresh: moved the old checkpoints {checkpoints} aside to {aside}; starting at step 0"
        )
    if newest is None:
        return "starting at step 0 (no checkpoint yet)"
    if not resume:
        return f"training.resume is off: starting at step 0 (ignoring {newest})"
    return (
        f"resuming from step {checkpoint_step(newest)} (checkpoint {newest}); "
        "pass --fresh to start over"
    )
