"""Power analysis of the second edition (issue #19): how many seeds the pre-registered rules need.

    .venv/bin/python study/power.py --first study/results/full-20261202-005730 \\
        --pilot study/results/pilot2-<time> [--out study/results/power2.json]

The seed-to-seed spread of the paired differences (arm - grpo, the same seed) comes from two
sources: the first study's five arms at its budget checkpoint (bitcount, 3 seeds), and a pilot
on the new task. The planning SD of each endpoint is the larger of the first study's (root
mean square over its arms) and the pilot's: fixed here before the pilot ran. The power of a
rule at ``n`` seeds is simulated with the rule itself (``analysis.rule_accuracy`` /
``rule_tokens`` on a t-interval with n - 1 degrees of freedom): paired differences drawn
normal with the planning SD around the assumed true effect, the fraction of draws the rule
calls "reproduced".

Planning assumptions, fixed before any figure: accuracy claims assume no true difference
(non-inferiority at the rules' margin, 3 points); the token claim assumes a true ratio of
0.7 (a 30% cut, so the rule's 0.8 threshold is not a coin flip), and is also shown at 0.6
and 0.8.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import analysis

TARGET_POWER = 0.8
PLAN_RATIO = 0.7  # the token cut assumed for planning
SIMS = 4000
MAX_SEEDS = 80
#: (endpoint key, view, log ratio, rule, true effect on the rule's scale)
ENDPOINTS: dict[str, tuple[str, str, bool, Callable[[dict[str, Any] | None], str], float]] = {
    "mean@k non-inferiority (3 points)": ("mean_at_k", "budget", False, analysis.rule_accuracy, 0.0),
    "greedy accuracy non-inferiority (3 points)": ("greedy_acc", "budget", False, analysis.rule_accuracy, 0.0),
    "reasoning-token cut (ratio <= 0.8)": ("reasoning_std", "budget", True, analysis.rule_tokens, math.log(PLAN_RATIO)),
}  # fmt: skip


def paired_sds(summaries: dict[str, Any], key: str, view: str, log: bool) -> dict[str, float]:
    """Per arm, the SD over seeds of its paired difference (or log ratio) against grpo."""
    out = {}
    for arm in summaries:
        if arm == "grpo":
            continue
        p = analysis.paired(summaries, arm, "grpo", key, view, log=log)
        if p is None or p["n"] < 2:
            continue
        vals = [math.log(v) if log else v for v in p["per_seed"].values()]
        out[arm] = statistics.stdev(vals)
    return out


def rms(xs: list[float]) -> float:
    return math.sqrt(statistics.fmean(x * x for x in xs)) if xs else math.nan


def power(rule: Callable[[dict[str, Any] | None], str], effect: float, sd: float, n: int,
          log: bool, sims: int = SIMS, seed: int = 0) -> float:  # fmt: skip
    """The fraction of ``sims`` simulated n-seed studies that ``rule`` calls reproduced."""
    rng = random.Random(seed)
    hits = 0
    for _ in range(sims):
        xs = [rng.gauss(effect, sd) for _ in range(n)]
        m, lo, hi = analysis.t_interval(xs)
        if log:
            m, lo, hi = math.exp(m), math.exp(lo), math.exp(hi)
        hits += rule({"mean": m, "lo": lo, "hi": hi, "n": n}) == "reproduced"
    return hits / sims


def seeds_needed(rule: Callable[[dict[str, Any] | None], str], effect: float, sd: float,
                 log: bool) -> int | None:  # fmt: skip
    """The smallest seed count with power >= TARGET_POWER (None above MAX_SEEDS)."""
    for n in range(3, MAX_SEEDS + 1):
        if power(rule, effect, sd, n, log) >= TARGET_POWER:
            return n
    return None


def analyse(first: Path, pilot: Path | None) -> dict[str, Any]:
    sources = {"first study": json.loads((first / "summary.json").read_text())["summaries"]}
    if pilot is not None:
        sources["pilot"] = json.loads((pilot / "summary.json").read_text())["summaries"]
    out: dict[str, Any] = {}
    for name, (key, view, log, rule, effect) in ENDPOINTS.items():
        sds = {src: paired_sds(s, key, view, log) for src, s in sources.items()}
        pooled = {src: rms(list(v.values())) for src, v in sds.items()}
        plan = max(v for v in pooled.values() if not math.isnan(v))
        row: dict[str, Any] = {"per_arm_sd": sds, "pooled_sd": pooled, "planning_sd": plan,
                               "effect": effect, "seeds_needed": seeds_needed(rule, effect, plan, log),
                               "power_at": {n: power(rule, effect, plan, n, log) for n in (3, 10, 15, 20, 30)}}  # fmt: skip
        if log:
            row["seeds_needed_at_ratio"] = {
                r: seeds_needed(rule, math.log(r), plan, log) for r in (0.6, 0.7, 0.8)
            }
        out[name] = row
    return out


def table(res: dict[str, Any]) -> str:
    lines = [
        "| endpoint | SD first study (RMS) | SD pilot | planning SD | seeds for 80% power "
        "| power at 3 / 10 / 15 / 20 / 30 seeds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in res.items():
        p = r["pooled_sd"]
        pw = " / ".join(f"{r['power_at'][n]:.2f}" for n in (3, 10, 15, 20, 30))
        extra = ""
        if "seeds_needed_at_ratio" in r:
            extra = (
                " (true ratio "
                + ", ".join(
                    f"{k}: {v if v is not None else f'>{MAX_SEEDS}'}"
                    for k, v in r["seeds_needed_at_ratio"].items()
                )
                + ")"
            )
        need = r["seeds_needed"] if r["seeds_needed"] is not None else f">{MAX_SEEDS}"
        lines.append(
            f"| {name} | {analysis.fmt(p.get('first study'))} | {analysis.fmt(p.get('pilot'))} "
            f"| {analysis.fmt(r['planning_sd'])} | {need}{extra} | {pw} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--first", type=Path, required=True, help="the first study's run directory")
    ap.add_argument("--pilot", type=Path, default=None, help="the pilot's run directory")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    res = analyse(args.first, args.pilot)
    print(table(res), end="")
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
