"""study/smollm2_report.py on the committed raw records of the SmolLM2 learning run
(study/results/smollm2-*-s0/): the figures docs/results.md quotes come out of those logs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "study"))

import smollm2_report  # noqa: E402  (study/ is not a package)

RUNS = ROOT / "study" / "results"


@pytest.mark.parametrize("run", ["smollm2-agpo-s0", "smollm2-grpo-s0"])
def test_records_hold_every_step_and_the_three_evaluations(run: str) -> None:
    steps, evals = smollm2_report.records(RUNS / run)
    assert [s["step"] for s in steps] == list(range(1, 41))
    assert [e["step"] for e in evals] == [0, 20, 40]
    assert all(e["prompts"] == 96 for e in evals)
    assert evals[0]["accuracy"] == pytest.approx(45 / 96)  # step 0: the same start in both runs


def test_smooth_is_a_moving_mean() -> None:
    assert smollm2_report.smooth([1.0, 2.0, 3.0, 6.0], 2) == [1.5, 2.5, 4.5]


def test_plot_writes_the_figure(tmp_path: Path) -> None:
    out = tmp_path / "run.png"
    smollm2_report.main(
        ["plot", f"{RUNS / 'smollm2-agpo-s0'}=AGPO", f"{RUNS / 'smollm2-grpo-s0'}=GRPO",
         "--out", str(out)]
    )  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
