"""Weights & Biases (``spec.tracking.wandb``): online with ``WANDB_API_KEY`` (from a
secretKeyRef in the pods), or offline run files under the checkpoint directory's ``wandb/`` for
``wandb sync``. The config is the resolved spec; every figure is logged at the record's step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agpo_api.models import WandbSpec
from agpo_api.records import Kind, figures


class WandbTracker:
    name = "wandb"

    def __init__(self, spec: WandbSpec, job: str, directory: Path) -> None:
        self.spec, self.job, self.directory = spec, job, directory

    def start(self, header: dict[str, Any]) -> None:
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.spec.project,
            entity=self.spec.entity,
            name=self.job,
            mode=self.spec.mode,
            dir=str(self.directory),
            config={"spec": header.get("spec", {}), "versions": header.get("versions", {})},
            # the trainer's log is its own: no console capture, no system metrics thread
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )

    def log(self, kind: Kind, record: dict[str, Any]) -> None:
        # An evaluation shares its step with the step record before it: W&B merges them.
        self.run.log(figures(kind, record), step=record["step"])

    def finish(self, checkpoint: Path | None) -> None:
        self.run.finish()
