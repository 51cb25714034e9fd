"""CI's smoke run of the AGPO-vs-GRPO study (`make study-smoke`): the second edition's set-up
(bitcount-copy), 1 seed, 4 arms, 4 steps.

It runs the real command (warm-up, the trainer's loop with in-process generation, test
endpoints, analysis, plots) and checks that every record, the verdict table and the plots
are produced and well-formed; it does not check the verdicts' values (4 steps decide
nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERDICTS = {"reproduced", "not reproduced", "inconclusive"}
STEP_KEYS = {"step", "completions_step", "completions", "reward", "zero_var", "all_correct",
             "all_wrong", "accuracy", "reasoning_correct", "loss", "grad_norm"}  # fmt: skip


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_study_smoke_produces_records_and_verdicts(tmp_path: Path) -> None:
    out, images = tmp_path / "run", tmp_path / "images"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "study/study.py", "run", "--config", "smoke", "--out", str(out),
           "--images", str(images)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| claim |" in proc.stdout  # the verdict table is printed

    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"] == "smoke" and meta["machine"]["torch"]
    budget = meta["budget"]["completions"]
    assert budget == 4 * 4 * 8

    assert meta["budget"]["task"] == "bitcount-copy" and meta["budget"]["edition"] == 2
    for arm in ("grpo", "resample", "agpo-len-all", "grpo-preset"):
        d = out / f"{arm}-s0"
        spec = json.loads((d / "spec.json").read_text())["spec"]
        assert spec["dataset"]["source"]["builtin"]["task"] == "bitcount-copy"
        assert spec["algorithm"]["lengthReward"]["type"] in {"none", "agpo"}  # resolved
        steps = lines(d / "steps.jsonl")
        assert [s["step"] for s in steps] == [1, 2, 3, 4]
        assert set(steps[0]) >= STEP_KEYS
        assert all(0 <= s["all_correct"] + s["all_wrong"] <= 1 for s in steps)
        evals = lines(d / "eval.jsonl")
        assert [e["step"] for e in evals] == [0, 2, 4]
        tests = lines(d / "test.jsonl")
        views = {v for t in tests for v in t["view"].split("+")}
        assert views == {"budget", "steps"}
        for t in tests:
            assert t["completions"] <= budget or "budget" not in t["view"]
            for kind in ("greedy", "sampled"):
                assert 0 <= t[kind]["accuracy"] <= 1
                assert t[kind]["se"] >= 0
                assert sum(b["n"] for b in t[kind]["buckets"].values()) > 0
    algo = {a: json.loads((out / f"{a}-s0" / "spec.json").read_text())["spec"]["algorithm"]
            for a in ("grpo-preset", "agpo-len-all")}  # fmt: skip
    assert algo["grpo-preset"]["klCoefficient"] == 0.04  # exactly `preset: grpo`
    assert algo["grpo-preset"]["lossAggregation"] == "seq-mean-token-mean"
    assert algo["agpo-len-all"]["lengthReward"]["scope"] == "all"
    # resample spends more per step; its budget checkpoint is earlier than its last step
    resample = lines(out / "resample-s0" / "steps.jsonl")
    assert resample[-1]["completions"] > budget

    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdicts"], "no verdict rows"
    assert {r["verdict"] for r in summary["verdicts"]} <= VERDICTS
    table = (out / "verdicts.md").read_text()
    assert "| claim | endpoint (view) |" in table and "## Per seed" in table
    claims = {r["claim"] for r in summary["verdicts"]}
    assert "token cut >= 20%: agpo-len-all vs grpo" in claims  # the second edition's claims
    for name in ("accuracy", "reasoning", "zero-variance", "scratch"):
        png = images / f"study2-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
