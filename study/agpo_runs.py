"""Two arms x one seed of the study through the real `agpo run` (vLLM servers, torchrun).

    flock /tmp/agpo-heavy.lock nice -n 10 .venv/bin/python study/agpo_runs.py --arm grpo
    flock /tmp/agpo-heavy.lock nice -n 10 .venv/bin/python study/agpo_runs.py --arm agpo-len
    .venv/bin/python study/agpo_runs.py --compare study/results/<v2 run>

The job is the study's own manifest (:func:`arms.manifest` of ``--config``, default the
second edition's ``v2``; ``full``: the first edition's, results in ``agpo-run/``; seed 0: the same warm-up cache
key, so the same warm base, the same eval prompts and evaluation settings), with
``training.steps`` cut to ``--steps`` and the CPU trainer/rollout sections of
``manifests/samples/tiny-cpu.yaml``. Its ``eval`` and ``step`` lines are read from the
trainer log into ``study/results/agpo-run/<arm>.json``; ``--compare`` prints them beside
the in-process run's eval records at the same steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from analysis import read_jsonl
from arms import CONFIGS, manifest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "study" / "results"


def out_dir(config: str) -> Path:
    """``agpo-run/`` for the first edition (history), ``agpo-run-<config>/`` otherwise."""
    return RESULTS / ("agpo-run" if config == "full" else f"agpo-run-{config}")


CPU_SECTIONS: dict[str, Any] = {
    "trainer": {"procsPerNode": 1, "gpusPerNode": 0},
    "rollout": {
        "gpusPerReplica": 0,
        "maxModelLen": 128,
        "gpuMemoryUtilization": 0.3,
        "weightSync": {"backend": "gloo"},
    },
}


def job(arm: str, steps: int, config: str) -> dict[str, Any]:
    m = manifest(arm, 0, CONFIGS[config])
    m["metadata"]["name"] = f"study-run-{arm}"
    m["spec"]["training"]["steps"] = steps
    m["spec"]["training"]["checkpoint"] = {"everySteps": steps, "keep": 1}
    m["spec"] |= CPU_SECTIONS
    return m


def parse_log(text: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"eval": [], "step": []}
    for line in text.splitlines():
        for kind in out:
            i = line.find(f"{kind} {{")
            if i >= 0:
                # a line that only mentions "eval {" is not a record
                with contextlib.suppress(json.JSONDecodeError):
                    out[kind].append(json.loads(line[i + len(kind) + 1 :]))
    return out


def run(arm: str, steps: int, config: str) -> int:
    out = out_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(job(arm, steps, config), sort_keys=False))
    workdir = ROOT / "runs" / f"study-agpo-{arm}"
    t0 = time.time()
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("agpo")), "run", str(path), "--workdir",
         str(workdir), "--fresh"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.time() - t0
    log = (workdir / "logs" / "trainer.log").read_text() if (workdir / "logs").exists() else ""
    parsed = parse_log(log)
    rec = {"arm": arm, "steps": steps, "rc": proc.returncode, "seconds": round(seconds, 1),
           "summary": proc.stdout[-2000:], "stderr": proc.stderr[-2000:]} | parsed  # fmt: skip
    (out / f"{arm}.json").write_text(json.dumps(rec, indent=1))
    print(proc.stdout[-1500:])
    print(f"agpo run {arm}: rc {proc.returncode}, {seconds:.0f} s, {len(parsed['eval'])} evals")
    for e in parsed["eval"]:
        print(f"  step {e['step']}: greedy eval accuracy {e['accuracy']:.3f}, reasoning tokens "
              f"{e['reasoningTokens']}")  # fmt: skip
    return proc.returncode


def compare(study_run: Path, config: str) -> int:
    print("| arm | step | agpo run: eval acc | in-process: eval acc | agpo run: reasoning "
          "tokens | in-process: reasoning tokens |\n| --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for f in sorted(out_dir(config).glob("*.json")):
        rec = json.loads(f.read_text())
        ours = {e["step"]: e for e in read_jsonl(study_run / f"{rec['arm']}-s0" / "eval.jsonl")}
        for e in rec["eval"]:
            o = ours.get(e["step"])
            rt = e["reasoningTokens"]
            print(f"| {rec['arm']} | {e['step']} | {e['accuracy']:.3f} | "
                  f"{o['accuracy']:.3f} | {rt if rt is None else round(rt, 2)} | "
                  f"{round(o['reasoning_tokens'], 2) if o and o['reasoning_tokens'] else '-'} |"
                  if o else f"| {rec['arm']} | {e['step']} | {e['accuracy']:.3f} | - | {rt} | - |")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arm", choices=("grpo", "agpo-len"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--compare", type=Path, default=None)
    ap.add_argument("--config", default="v2", choices=sorted(CONFIGS))
    args = ap.parse_args(argv)
    if args.compare is not None:
        return compare(args.compare, args.config)
    if args.arm is None:
        ap.error("--arm or --compare")
    return run(args.arm, args.steps, args.config)


if __name__ == "__main__":
    sys.exit(main())
