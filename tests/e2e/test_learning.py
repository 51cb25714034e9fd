"""The paper's setting in miniature: RL alone raises the tiny model's accuracy on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agpo_trainer.rollout.server import free_port

from e2e_support import ROOT_SAMPLE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_accuracy_rises_on_builtin_arithmetic(tmp_path: Path, cache_dir: Path) -> None:
    """The embedded default (manifests/samples/tiny-cpu.yaml) through `agpo run`.

    The format warm-up uses random answers, so the starting accuracy is chance (about 10%);
    whatever is above that comes from the RL updates.
    """
    out = subprocess.run(
        [sys.executable, "-m", "agpo_cli", "run", str(ROOT_SAMPLE), "--steps", "60",
         "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "AGPO_METRICS_PORT": str(free_port())},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    log = (tmp_path / "run" / "logs" / "trainer.log").read_text()
    acc = [
        json.loads(ln.split(" step ", 1)[1])["accuracy"]
        for ln in log.splitlines()
        if " step {" in ln
    ]
    assert len(acc) == 60
    first, last = sum(acc[:10]) / 10, sum(acc[-10:]) / 10
    print(f"accuracy: first 10 steps {first:.3f}, last 10 steps {last:.3f}")
    assert first < 0.35, "the warm-up alone should leave accuracy near chance"
    assert last >= first + 0.15, f"accuracy did not rise clearly: {first:.3f} -> {last:.3f}"
