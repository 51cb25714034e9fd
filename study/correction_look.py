"""The exploratory look of issue #20 at the rollout correction, through the real `agpo run`
(vLLM server, torchrun) of the embedded default, seed 0, one run per variant:

    flock /tmp/agpo-heavy.lock .venv/bin/python study/correction_look.py [--steps 40]
    .venv/bin/python study/correction_look.py --report

Variants, each ``manifests/samples/tiny-cpu.yaml`` with one change (the sample stays the one
source of its settings):

- ``fp32``: the sample as it is (float32 engine and trainer; no correction);
- ``fp32-tis``: ``rolloutCorrection: {mode: tis}`` (token level, cap 3);
- ``bf16`` and ``bf16-tis``: the sample, and with TIS, with ``model.dtype: bfloat16`` (vLLM
  serves bf16, the trainer computes under bf16 autocast over float32 masters): the
  engine-trainer gap where it is expected to be large (its own warm-up: the key has the dtype);
- ``gspo-tis``: the ``gspo`` preset (group size 8) with TIS: the combination the e2e test runs.

For each run the trainer log's ``eval`` records (held-out greedy accuracy, mean@4, reasoning
tokens at steps 0, 20, 40) and the step records' ``rolloutTrainerKl`` / ``isWeightMean`` are
written to ``study/results/correction/<variant>.json``; ``--report`` prints the table
docs/results.md quotes. Exploratory: one seed, no decision rule.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "manifests" / "samples" / "tiny-cpu.yaml"
OUT = ROOT / "study" / "results" / "correction"
TIS = {"rolloutCorrection": {"mode": "tis"}}
#: variant -> (spec section -> fields merged into the sample's, or replacing "algorithm")
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "fp32-tis": {"algorithm": TIS},
    "bf16": {"model": {"dtype": "bfloat16"}},
    "bf16-tis": {"algorithm": TIS, "model": {"dtype": "bfloat16"}},
    "gspo-tis": {"algorithm!": {"preset": "gspo", "groupSize": 8, **TIS}},
}


def job(variant: str, steps: int) -> dict[str, Any]:
    """The sample with the variant's change and ``steps`` steps."""
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["metadata"]["name"] = f"tiny-cpu-{variant}"
    spec = doc["spec"]
    for key, fields in VARIANTS[variant].items():
        if key.endswith("!"):
            spec[key[:-1]] = dict(fields)
        else:
            spec[key] = {**spec[key], **fields}
    spec["training"]["steps"] = steps
    return doc


def records(log: str, kind: str) -> list[dict[str, Any]]:
    marker = f" {kind} "
    return [json.loads(ln.split(marker, 1)[1]) for ln in log.splitlines() if f"{marker}{{" in ln]


def last_run(log: str) -> str:
    """The part of a trainer log written by its last run (a workdir's log is appended to)."""
    start = log.rfind(" algorithm {")
    return log if start < 0 else log[log.rfind("\n", 0, start) + 1 :]


def run(variant: str, steps: int, workdir: Path) -> dict[str, Any]:
    shutil.rmtree(workdir / variant, ignore_errors=True)  # a fresh log and no checkpoint
    path = workdir / f"{variant}.yaml"
    path.write_text(yaml.safe_dump(job(variant, steps)))
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "agpo_cli", "run", str(path), "--workdir",
           str(workdir / variant), "--fresh"]  # fmt: skip
    from agpo_trainer.rollout.server import free_port

    env = {**os.environ, "AGPO_METRICS_PORT": str(free_port())}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if done.returncode != 0:
        sys.exit(f"{variant}: agpo run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    log = last_run((workdir / variant / "logs" / "trainer.log").read_text())
    return {
        "variant": variant,
        "job": job(variant, steps)["spec"],
        "wall_s": round(time.monotonic() - t0, 1),
        "evals": records(log, "eval"),
        "steps": records(log, "step"),
        "load_after": os.getloadavg(),
    }


def report() -> None:
    print(f"{'variant':<10}{'step':>5}{'greedy':>8}{'mean@4':>8}{'pass@4':>8}{'reason':>8}"
          f"{'rollout-trainer KL (median, max)':>36}{'IS weight':>11}")  # fmt: skip
    for variant in VARIANTS:
        path = OUT / f"{variant}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        kls = [s["rolloutTrainerKl"] for s in r["steps"] if "rolloutTrainerKl" in s]
        ws = [s["isWeightMean"] for s in r["steps"] if "isWeightMean" in s]
        kl = f"{statistics.median(kls):.2e}, {max(kls):.2e}" if kls else "-"
        w = f"{statistics.median(ws):.6f}" if ws else "-"
        for i, e in enumerate(r["evals"]):
            print(f"{variant if i == 0 else '':<10}{e['step']:>5}{e['accuracy']:>8.3f}"
                  f"{e['meanAtK']:>8.3f}{e['passAtK']:>8.3f}{e['reasoningTokens'] or 0:>8.2f}"
                  f"{kl if i == 0 else '':>36}{w if i == 0 else '':>11}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/agpo-correction-look"))
    ap.add_argument("--report", action="store_true", help="print the table of saved runs")
    args = ap.parse_args(argv)
    if args.report:
        report()
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    for variant in args.variants.split(","):
        result = run(variant, args.steps, args.workdir)
        (OUT / f"{variant}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"{variant}: {result['wall_s']} s", flush=True)
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
