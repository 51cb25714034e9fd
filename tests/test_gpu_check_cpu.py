"""benchmarks/gpu_check.py (the prepared GPU check) without a GPU: its tiny CPU mode runs the
trainer's update step end to end and prints every figure; asking for CUDA where there is none
is one line and exit code 2. No figure is asserted: it is a benchmark."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )  # fmt: skip


@pytest.mark.slow
def test_tiny_cpu_mode_runs_the_update_step_and_prints_its_figures() -> None:
    r = _run("--device", "cpu", "--tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for line in (
        "gpu_check: device cpu",
        "gpu_check: torch ",
        # the doc's table is read, not restated: a reworded row fails here
        "gpu_check: estimate (docs/gpu-memory.md, 'peak, estimated'): ~",
        "FSDP2 on 1 rank (gloo group of 1)",
        "float32 masters, model.dtype bfloat16 compute",
        "64 sequences of 32 + 96 tokens (one rank's share of 128 x 8 over 16 ranks)",
        "4 micro-batches of <= 1024 tokens per optimizer step",
        "gradientCheckpointing true",
        "gpu_check: step time ",
        "gpu_check: update tokens/s ",
        "gpu_check: peak memory in the timed steps: ",
    ):
        assert line in out, f"{line!r} not in:\n{out}"
    steps = re.findall(
        r"^gpu_check: step \d \((?:warm-up, not timed|timed)\): ([\d.]+) s, loss (\S+),", out, re.M
    )
    assert len(steps) == 3
    assert all(float(loss) == float(loss) for _, loss in steps)  # not NaN
    assert r.stderr.count("Traceback") == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_refuses_in_one_line_with_exit_code_2() -> None:
    r = _run("--device", "cuda", timeout=120)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("gpu_check: no CUDA device here (torch ")
    assert "--device cpu --tiny" in lines[0]


def test_the_full_shape_on_cpu_is_refused() -> None:
    r = _run("--device", "cpu", timeout=60)
    assert r.returncode == 2
    assert "--device cpu needs --tiny" in r.stderr
