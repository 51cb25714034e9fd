"""The paper's setting in miniature, through `agpo run` (real vLLM and torchrun on CPU).

Three runs:
- the embedded default (manifests/samples/tiny-cpu.yaml, bitcount): greedy accuracy on the
  held-out eval split, which is never trained on, rises above the warm-up's start;
- the same sample under the gspo preset with the rollout correction (TIS) on: it learns too,
  and a real Prometheus scrapes the correction's figures while it runs;
- the negative control (jobs/arithmetic-cpu.yaml, the old default): RL raises the accuracy
  on its 110 training problems from chance, which says nothing about generalisation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agpo_api.records import find_records, read_records
from agpo_trainer.rollout.server import free_port

from e2e_support import ROOT_SAMPLE, prom_query

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "study"))
import correction_look  # study/ is not a package: the variant's one definition

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ARITHMETIC = Path(__file__).resolve().parent / "jobs" / "arithmetic-cpu.yaml"


def agpo_run(job: Path, workdir: Path, *args: str) -> str:
    """`agpo run` to the end; the trainer's log."""
    out = subprocess.run(
        [sys.executable, "-m", "agpo_cli", "run", str(job), "--workdir", str(workdir), *args],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "AGPO_METRICS_PORT": str(free_port())},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return (workdir / "logs" / "trainer.log").read_text()


def records(log: str, kind: str) -> list[dict[str, Any]]:
    marker = f" {kind} "
    return [json.loads(ln.split(marker, 1)[1]) for ln in log.splitlines() if f"{marker}{{" in ln]


def test_held_out_accuracy_rises_on_the_embedded_default(tmp_path: Path, cache_dir: Path) -> None:
    """80 steps of AGPO on bitcount after the gate's warm-up. Measured twice on the 2-core
    machine on 2026-12-07 (identical, the run is deterministic at a fixed thread count):
    greedy eval accuracy 0.484 -> 0.672 (0.719 at steps 40 and 60), mean@4 0.441 -> 0.629 on
    128 eval prompts. The thresholds leave
    room for other machines' numerics: half the measured gain, about two standard errors of a
    difference of two accuracies on 128 prompts."""
    log = agpo_run(ROOT_SAMPLE, tmp_path / "run")
    assert len(records(log, "step")) == 80
    evals = records(log, "eval")
    print("eval greedy accuracy:", [(e["step"], round(e["accuracy"], 3)) for e in evals])
    assert [e["step"] for e in evals] == [0, 20, 40, 60, 80]
    start, end = evals[0], evals[-1]
    assert start["prompts"] == end["prompts"] == 128
    # The warm-up leaves a mediocre start (the gate: 0.3-0.65), so there is room to learn.
    assert 0.3 <= start["accuracy"] <= 0.7, start
    assert end["accuracy"] >= start["accuracy"] + 0.10, (start, end)
    assert end["meanAtK"] >= start["meanAtK"] + 0.05, (start, end)  # sampled answers too


def test_training_accuracy_rises_on_the_arithmetic_control(tmp_path: Path, cache_dir: Path) -> None:
    """The format warm-up uses random answers, so the starting accuracy is chance (about
    10%); whatever is above that comes from the RL updates, on the training prompts."""
    log = agpo_run(ARITHMETIC, tmp_path / "run", "--steps", "60")
    assert records(log, "eval") == []  # no held-out split: nothing to generalise to
    acc = [s["accuracy"] for s in records(log, "step")]
    assert len(acc) == 60
    first, last = sum(acc[:10]) / 10, sum(acc[-10:]) / 10
    print(f"accuracy: first 10 steps {first:.3f}, last 10 steps {last:.3f}")
    assert first < 0.35, "the warm-up alone should leave accuracy near chance"
    assert last >= first + 0.15, f"accuracy did not rise clearly: {first:.3f} -> {last:.3f}"


def test_gspo_with_tis_learns_and_exports_the_correction_figures(
    tmp_path: Path, cache_dir: Path, prometheus: Any
) -> None:
    """The embedded default with ``preset: gspo`` and ``rolloutCorrection: {mode: tis}`` (the
    ``gspo-tis`` variant of study/correction_look.py), 40 steps through `agpo run`, scraped by
    a real Prometheus: it learns (held-out greedy accuracy up by GSPO_TIS_GAIN), the update's
    ratio is exactly 1 (one update per batch, the old log-probs the trainer's own), the
    engine-trainer gap is tiny in float32, and Prometheus scraped the correction's series."""
    job = tmp_path / "gspo-tis.yaml"
    job.write_text(yaml.safe_dump(correction_look.job("gspo-tis", 40)))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agpo_cli", "run", str(job), "--workdir", str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "AGPO_METRICS_PORT": str(port)},
    )  # fmt: skip
    prom = prometheus(port)
    try:
        _, err = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    log = (tmp_path / "run" / "logs" / "trainer.log").read_text()
    steps = records(log, "step")
    assert len(steps) == 40
    for s in steps:  # one update per batch, old log-probs the trainer's own: the ratio is 1
        assert s["ratioMin"] == pytest.approx(1.0, abs=1e-5), s
        assert s["ratioMax"] == pytest.approx(1.0, abs=1e-5), s
        assert 0.0 <= s["rolloutTrainerKl"] < 1e-3 and s["isMaskedRatio"] == 0.0, s
        assert s["isWeightMean"] == pytest.approx(1.0, abs=1e-2), s
    evals = records(log, "eval")
    print("eval greedy accuracy:", [(e["step"], round(e["accuracy"], 3)) for e in evals])
    start, end = evals[0], evals[-1]
    assert end["step"] == 40 and start["prompts"] == end["prompts"] == 128
    assert end["accuracy"] >= start["accuracy"] + GSPO_TIS_GAIN, (start, end)
    for series in ("agpo_rollout_trainer_kl", "agpo_is_weight_mean", "agpo_is_masked_ratio"):
        seen = prom_query(prom, f"last_over_time({series}[15m])")
        assert seen, f"{series} never scraped"
    weight = prom_query(prom, "max_over_time(agpo_is_weight_mean[15m])")
    assert float(weight[0]["value"][1]) == pytest.approx(1.0, abs=1e-2)
    # the records file holds what the log says, and `agpo run` ended with the report of it
    kept = read_records(find_records(tmp_path / "run"))
    assert [(r["step"], r["rewardMean"]) for r in kept.steps] == [
        (s["step"], s["rewardMean"]) for s in steps
    ]
    assert [r["evalAccuracy"] for r in kept.evals] == [e["accuracy"] for e in evals]
    report = tmp_path / "run" / "checkpoints" / "report.html"
    assert f"  report: {report}" in err.splitlines() and report.stat().st_size > 50_000


#: The held-out greedy gain the gspo-tis run must show in 40 steps: its measured run went
#: 0.484 -> 0.727 at step 40 (+0.24; 0.844 at 80, docs/results.md); half of it leaves room
#: for other machines' numerics.
GSPO_TIS_GAIN = 0.12
