"""TensorBoard (``spec.tracking.tensorboard``): event files under the checkpoint volume, written
with torch's ``SummaryWriter`` (the ``agpo[tensorboard]`` extra provides its writer). The
resolved spec is a text summary; every figure a scalar at the record's step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agpo_api.records import Kind, figures


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir

    def start(self, header: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        text = json.dumps({k: header.get(k) for k in ("job", "spec", "versions")}, indent=2)
        # Markdown: four spaces make the JSON a code block in TensorBoard's text tab.
        self.writer.add_text("run", "    " + text.replace("\n", "\n    "), 0)

    def log(self, kind: Kind, record: dict[str, Any]) -> None:
        for key, value in figures(kind, record).items():
            self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()  # the files are what a reader sees while the run goes on

    def finish(self, checkpoint: Path | None) -> None:
        self.writer.close()
