"""The AGPO-vs-GRPO study (issues #10 and #19): every arm x seed, the endpoints, the verdicts.

    make study          # = OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python study/study.py run --config v2
    make study-smoke    # 1 seed, 4 arms, 4 steps (CI: tests/study/test_study_smoke.py)
    .venv/bin/python study/study.py run --config full   # the first edition (bitcount, 6 arms)
    .venv/bin/python study/study.py analyse study/results/<run-id>   # tables, verdicts, plots again

``run`` 1. builds (or loads from the cache) each seed's warm base with the task's registered
warm-up and measures its test endpoints, 2. runs every arm x seed (:mod:`runner`, through
the trainer's own Experience / train_step / Evaluator; 2 worker processes), 3. computes the
endpoints, the paired differences and the pre-registered verdicts (:mod:`analysis`), prints
them, writes ``summary.json`` and ``verdicts.md`` into the run directory and the plots
(:mod:`plots`). Raw records: ``<run dir>/<arm>-s<seed>/{steps,eval,test}.jsonl``, resolved
specs, ``meta.json`` (git SHA, versions, machine, load average, the budget).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import analysis
from arms import ARMS, CONFIGS, Budget

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "study" / "results"


def _git_sha() -> str:
    """HEAD (+dirty), or ``AGPO_STUDY_GIT`` when the study runs from an exported snapshot."""
    if os.environ.get("AGPO_STUDY_GIT"):
        return os.environ["AGPO_STUDY_GIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "study", "trainer", "api"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "loadavg": os.getloadavg(),
        "git": _git_sha(),
    }


def _prepare(args: tuple[int, Budget, Path]) -> dict[str, Any]:
    from runner import prepare_seed

    return prepare_seed(*args)


def _arm(args: tuple[str, int, Budget, Path]) -> dict[str, Any]:
    from runner import run_arm

    return run_arm(*args)


def run(config: str, out: Path, workers: int, images: Path | None) -> int:
    b = CONFIGS[config]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    meta: dict[str, Any] = {
        "config": config,
        "budget": asdict(b) | {"completions": b.completions},
        "command": " ".join(sys.argv),
        "workers": workers,
        "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    more = (
        f" + {len(b.more_seeds_arms)} arms x {len(b.more_seeds)} more seeds" if b.more_seeds else ""
    )
    print(f"study {config}: {len(b.arms)} arms x {len(b.seeds)} seeds{more}, budget {b.completions} "
          f"completions ({b.steps} steps x {b.prompts} x G={b.group}), {workers} workers, "
          f"out {out}", flush=True)  # fmt: skip
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for r in pool.map(_prepare, [(s, b, out) for s in b.all_seeds]):
            print(f"base seed {r['seed']}: {r['seconds']} s", flush=True)
        # resample first: the longest runs start early, so the workers end together
        jobs = sorted([(a, s, b, out) for a, s in b.runs()], key=lambda j: j[0] != "resample")
        runs = []
        for r in pool.map(_arm, jobs):
            runs.append(r)
            print(f"{r['arm']} seed {r['seed']}: {r['seconds']} s, {r['completions']} "
                  f"completions ({len(runs)}/{len(jobs)}, {time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    meta |= {
        "runs": runs,
        "seconds": round(time.time() - t0, 1),
        "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_end": os.getloadavg(),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return analyse(out, images)


def analyse(out: Path, images: Path | None) -> int:
    meta = json.loads((out / "meta.json").read_text())
    b = Budget(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["budget"].items()
                  if k != "completions"})  # fmt: skip
    summaries: dict[str, dict[int, dict[str, Any]]] = {}
    for arm in ARMS:
        for seed in b.all_seeds:
            d = out / f"{arm}-s{seed}"
            if (d / "test.jsonl").exists():
                summaries.setdefault(arm, {})[seed] = analysis.run_summary(d, b.group, b.prompts)
    bases = {}
    for seed in b.all_seeds:
        f = out / f"base-s{seed}" / "test.jsonl"
        if f.exists():
            bases[seed] = analysis.endpoints(analysis.read_jsonl(f)[0])
    rows = analysis.verdict_rows(summaries, b.edition)
    more = (f" (and {list(b.more_seeds)} for {', '.join(b.more_seeds_arms)})"
            if b.more_seeds else "")  # fmt: skip
    table = analysis.verdict_table(rows)
    md = [
        f"# Study {meta['config']} (edition {b.edition}, task {b.task}): verdicts (printed by "
        "study/study.py)\n",
        f"Budget: {b.completions} generated completions per arm ({b.steps} steps x {b.prompts} "
        f"prompts x G={b.group}); seeds {list(b.seeds)}{more}; git {meta['machine']['git']}; "
        f"{meta.get('seconds', '?')} s with {meta['workers']} workers.\n",
        table,
        "\n## mean@k (%) per seed and arm, budget checkpoint\n",
        analysis.seed_matrix(summaries, "mean_at_k", "budget"),
        "\n## Reasoning tokens of correct answers (bucket-standardised) per seed and arm, budget "
        "checkpoint\n",
        analysis.seed_matrix(summaries, "reasoning_std", "budget", 2),
        "\n## Per seed, at the budget checkpoint\n",
        analysis.per_seed_table(summaries, "budget"),
        "\n## Per seed, at equal steps\n",
        analysis.per_seed_table(summaries, "steps"),
        "\n## Seed spread\n",
        analysis.spread_table(summaries),
        "\n" + analysis.se_check(summaries),
        "\n## Warm bases (step 0)\n",
        "| seed | greedy acc | mean@k | pass@k | reasoning (std) | filler | scratch |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
        + "\n".join(
            f"| {s} | {analysis.fmt(e['greedy_acc'], 1)} | {analysis.fmt(e['mean_at_k'], 1)} "
            f"| {analysis.fmt(e['pass_at_k'], 1)} | {analysis.fmt(e['reasoning_std'])} "
            f"| {analysis.fmt(e['filler_std'])} | {analysis.fmt(e['scratch_std'])} |"
            for s, e in sorted(bases.items())
        )
        + "\n",
    ]
    (out / "verdicts.md").write_text("\n".join(md))
    (out / "summary.json").write_text(
        json.dumps({"summaries": summaries, "bases": bases, "verdicts": rows}, indent=1)
    )
    print("\n" + table + "\n" + analysis.se_check(summaries), flush=True)
    if images is not None:
        import plots

        for p in plots.all_plots(out, b, images):
            print(f"plot {p}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every arm x seed, then analyse")
    r.add_argument("--config", default="full", choices=sorted(CONFIGS))
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--out", type=Path, default=None, help="default study/results/<config>-<time>")
    r.add_argument("--images", type=Path, default=None, help="write the PNG plots here")
    a = sub.add_parser("analyse", help="tables, verdicts and plots of a finished run")
    a.add_argument("out", type=Path)
    a.add_argument("--images", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        out = args.out or RESULTS / f"{args.config}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        return run(args.config, out, args.workers, args.images)
    return analyse(args.out, args.images)


if __name__ == "__main__":
    sys.exit(main())
