"""Endpoints, paired statistics and the pre-registered verdicts of the study (pure Python).

Every rule here is the one written in docs/results.md ("Study: decision rules") before the
full study ran; the verdict strings come from :func:`verdict_rows` only, never by hand.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ACC_MARGIN = 3.0  # points: "comparable" if the lower bound of the difference is >= -3
TOKEN_RATIO = 0.8  # the token claim: a cut of at least 20%
DRAWDOWN_EQUIV = 2.0  # points: no stability gain if the CI lies within +-2
MIN_CORRECT = 3  # a bucket counts in the standardised token mean with >= 3 correct answers
SMOOTH = 9  # centred moving-average window of the reward-noise residuals


# --------------------------------------------------------------------------- records
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_at(run: Path, view: str) -> dict[str, Any]:
    """The test record of ``view`` (``budget`` or ``steps``; ``budget+steps`` is both)."""
    for rec in read_jsonl(run / "test.jsonl"):
        if view in rec["view"].split("+"):
            return rec
    raise ValueError(f"{run}: no test record for view {view!r}")


# --------------------------------------------------------------------------- endpoints
def bucket_mean(buckets: dict[str, dict[str, float]], key: str) -> float | None:
    """Bucket-standardised mean of ``key`` over correct answers: the unweighted mean over bit
    counts of each bucket's mean (buckets with >= MIN_CORRECT correct answers), so solving
    more long strings is not counted as verbosity."""
    means = [b[key] / b["correct"] for b in buckets.values() if b["correct"] >= MIN_CORRECT]
    return statistics.fmean(means) if means else None


def pooled_mean(buckets: dict[str, dict[str, float]], key: str) -> float | None:
    n = sum(b["correct"] for b in buckets.values())
    return sum(b[key] for b in buckets.values()) / n if n else None


def endpoints(test: dict[str, Any]) -> dict[str, float | None]:
    """The per-run endpoints of one test record."""
    g, s = test["greedy"], test["sampled"]
    sb = s["buckets"]
    return {
        "greedy_acc": 100 * g["accuracy"],
        "mean_at_k": 100 * s["accuracy"],
        "mean_at_k_se": 100 * s["se"] if "se" in s else None,  # second edition on
        "pass_at_k": 100 * s["pass_at_k"],
        "reasoning_std": bucket_mean(sb, "reasoning"),
        "filler_std": bucket_mean(sb, "filler"),
        "scratch_std": bucket_mean(sb, "scratch"),
        "tokens_std": bucket_mean(sb, "tokens"),
        "reasoning_pooled": pooled_mean(sb, "reasoning"),
        "scratch_use_correct": pooled_mean(sb, "used_scratch"),
    }


def drawdown(accs: Sequence[float]) -> float:
    """Largest fall of the curve below its running maximum (points)."""
    peak, worst = -math.inf, 0.0
    for a in accs:
        peak = max(peak, a)
        worst = max(worst, peak - a)
    return 100 * worst


def reward_noise_ratio(steps: Sequence[dict[str, Any]], group: int, prompts: int) -> float:
    """Std of the step accuracy around its centred moving average, over the pure binomial
    sampling noise ``sqrt(p(1-p)/n)`` of a batch of ``n`` completions (mean over steps)."""
    acc = [s["accuracy"] for s in steps]
    n = group * prompts
    if len(acc) < SMOOTH:
        return math.nan
    h = SMOOTH // 2
    resid = [acc[i] - statistics.fmean(acc[i - h : i + h + 1]) for i in range(h, len(acc) - h)]
    expected = statistics.fmean(math.sqrt(max(a * (1 - a), 1e-9) / n) for a in acc)
    return statistics.pstdev(resid) / expected


def run_summary(run: Path, group: int, prompts: int) -> dict[str, Any]:
    steps = read_jsonl(run / "steps.jsonl")
    evals = read_jsonl(run / "eval.jsonl")
    out: dict[str, Any] = {}
    for view in ("budget", "steps"):
        t = test_at(run, view)
        out[view] = endpoints(t) | {"step": t["step"], "completions": t["completions"]}
    out["drawdown"] = drawdown([e["accuracy"] for e in evals])
    out["eval_final"] = 100 * evals[-1]["accuracy"]
    out["noise_ratio"] = reward_noise_ratio(steps, group, prompts)
    out["all_correct"] = statistics.fmean(s["all_correct"] for s in steps)
    out["all_wrong"] = statistics.fmean(s["all_wrong"] for s in steps)
    out["completions_per_step"] = statistics.fmean(s["completions_step"] for s in steps)
    out["seconds"] = sum(s["seconds"] for s in steps)
    return out


# --------------------------------------------------------------------------- statistics
#: two-sided 95% t quantiles t(0.975, df) for df 1-30 (beyond: Cornish-Fisher, error < 1e-3)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t975(df: int) -> float:
    """t(0.975, df): the table up to 30, then the Cornish-Fisher expansion around 1.96."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(xs: Sequence[float]) -> tuple[float, float, float]:
    """(mean, lower, upper) of a 95% t-interval with n - 1 degrees of freedom (the first
    study, 3 seeds: t = 4.303, as before; other seed counts used 1.96 until the power
    analysis needed them)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, math.nan, math.nan
    half = t975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def paired(
    summaries: dict[str, dict[int, dict[str, Any]]], arm: str, ref: str, key: str, view: str,
    *, log: bool = False,
) -> dict[str, Any] | None:  # fmt: skip
    """Per-seed differences ``arm - ref`` (or log ratios), mean and t-interval; ratios are
    returned back-transformed (geometric mean and its interval)."""
    seeds = sorted(set(summaries.get(arm, {})) & set(summaries.get(ref, {})))
    per: dict[int, float] = {}
    for s in seeds:
        a = _value(summaries[arm][s], key, view)
        r = _value(summaries[ref][s], key, view)
        if a is None or r is None or (log and (a <= 0 or r <= 0)):
            continue
        per[s] = math.log(a / r) if log else a - r
    if not per:
        return None
    m, lo, hi = t_interval(list(per.values()))
    if log:
        per = {s: math.exp(v) for s, v in per.items()}
        m, lo, hi = math.exp(m), math.exp(lo), math.exp(hi)
    # seeds both arms ran whose endpoint is missing (or, for a ratio, not positive): shown in
    # the table, never silently
    dropped = [s for s in seeds if s not in per]
    return {"per_seed": per, "mean": m, "lo": lo, "hi": hi, "n": len(per), "dropped": dropped}


def _value(summary: dict[str, Any], key: str, view: str) -> float | None:
    v = summary[view][key] if key in summary.get(view, {}) else summary.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


# --------------------------------------------------------------------------- rules
def rule_accuracy(p: dict[str, Any] | None) -> str:
    """Comparable or better: lower bound of the difference >= -3 points."""
    if p is None or math.isnan(p["lo"]):
        return "inconclusive"
    if p["lo"] >= -ACC_MARGIN:
        return "reproduced"
    if p["mean"] < -ACC_MARGIN and p["hi"] < 0:
        return "not reproduced"
    return "inconclusive"


def rule_tokens(p: dict[str, Any] | None) -> str:
    """A cut of >= 20%: geometric-mean ratio <= 0.8 with the upper bound < 1; not reproduced
    when the lower bound is above 0.8 (a 20% cut is excluded)."""
    if p is None or math.isnan(p["lo"]):
        return "inconclusive"
    if p["mean"] <= TOKEN_RATIO and p["hi"] < 1.0:
        return "reproduced"
    if p["lo"] > TOKEN_RATIO:
        return "not reproduced"
    return "inconclusive"


def rule_stability(p: dict[str, Any] | None) -> str:
    """Smaller drawdown: upper bound of the difference < 0; not reproduced when the lower
    bound is > 0 (less stable) or the interval lies within +-2 points (no gain > 2)."""
    if p is None or math.isnan(p["lo"]):
        return "inconclusive"
    if p["hi"] < 0:
        return "reproduced"
    if p["lo"] > 0 or (p["lo"] >= -DRAWDOWN_EQUIV and p["hi"] <= DRAWDOWN_EQUIV):
        return "not reproduced"
    return "inconclusive"


Claim = tuple[str, str, str, str, str, bool, Any]

#: (claim, arm, reference, endpoint key, view, log ratio, rule): the first edition's (issue #10)
CLAIMS_V1: tuple[Claim, ...] = (
    ("accuracy comparable: agpo vs grpo", "agpo", "grpo", "greedy_acc", "budget", False, rule_accuracy),
    ("accuracy comparable: agpo-len vs grpo", "agpo-len", "grpo", "greedy_acc", "budget", False, rule_accuracy),
    ("token cut >= 20%: agpo-len vs grpo", "agpo-len", "grpo", "reasoning_std", "budget", True, rule_tokens),
    ("stability (drawdown): agpo vs grpo", "agpo", "grpo", "drawdown", "budget", False, rule_stability),
    ("attribution: length reward under agpo (agpo-len vs agpo)", "agpo-len", "agpo", "reasoning_std", "budget", True, rule_tokens),
    ("attribution: length reward under grpo (grpo-len vs grpo)", "grpo-len", "grpo", "reasoning_std", "budget", True, rule_tokens),
    ("attribution: +-1 alone (agpo vs grpo)", "agpo", "grpo", "reasoning_std", "budget", True, rule_tokens),
    ("accuracy comparable: mask vs grpo", "mask", "grpo", "greedy_acc", "budget", False, rule_accuracy),
    ("accuracy comparable: resample vs grpo (equal completions)", "resample", "grpo", "greedy_acc", "budget", False, rule_accuracy),
    ("accuracy comparable: resample vs grpo (equal steps)", "resample", "grpo", "greedy_acc", "steps", False, rule_accuracy),
    ("accuracy comparable: agpo-len vs agpo", "agpo-len", "agpo", "greedy_acc", "budget", False, rule_accuracy),
    ("accuracy comparable: grpo-len vs grpo", "grpo-len", "grpo", "greedy_acc", "budget", False, rule_accuracy),
)  # fmt: skip


#: the second edition's (issue #19), written in docs/results.md before it ran. Primary: the
#: paper's two claims for its AGPO (agpo-len) against grpo, on the lower-variance endpoints
#: (mean@k on 1,113 test prompts x k; bucket-standardised reasoning tokens of correct answers);
#: the seed count was sized for these two. The rest are secondary.
CLAIMS_V2: tuple[Claim, ...] = (
    ("(primary) accuracy comparable: agpo-len vs grpo", "agpo-len", "grpo", "mean_at_k", "budget", False, rule_accuracy),
    ("(primary) token cut >= 20%: agpo-len vs grpo", "agpo-len", "grpo", "reasoning_std", "budget", True, rule_tokens),
    ("accuracy comparable: agpo-len-all vs grpo", "agpo-len-all", "grpo", "mean_at_k", "budget", False, rule_accuracy),
    ("token cut >= 20%: agpo-len-all vs grpo", "agpo-len-all", "grpo", "reasoning_std", "budget", True, rule_tokens),
    ("accuracy comparable: agpo vs grpo", "agpo", "grpo", "mean_at_k", "budget", False, rule_accuracy),
    ("stability (drawdown): agpo vs grpo", "agpo", "grpo", "drawdown", "budget", False, rule_stability),
    ("attribution: length reward under agpo (agpo-len vs agpo)", "agpo-len", "agpo", "reasoning_std", "budget", True, rule_tokens),
    ("attribution: length reward under grpo (grpo-len vs grpo)", "grpo-len", "grpo", "reasoning_std", "budget", True, rule_tokens),
    ("attribution: +-1 alone (agpo vs grpo)", "agpo", "grpo", "reasoning_std", "budget", True, rule_tokens),
    ("attribution: scope all (agpo-len-all vs agpo-len)", "agpo-len-all", "agpo-len", "reasoning_std", "budget", True, rule_tokens),
    ("accuracy comparable: mask vs grpo", "mask", "grpo", "mean_at_k", "budget", False, rule_accuracy),
    ("accuracy comparable: resample vs grpo (equal completions)", "resample", "grpo", "mean_at_k", "budget", False, rule_accuracy),
    ("accuracy comparable: resample vs grpo (equal steps)", "resample", "grpo", "mean_at_k", "steps", False, rule_accuracy),
    ("accuracy comparable: grpo-len vs grpo", "grpo-len", "grpo", "mean_at_k", "budget", False, rule_accuracy),
    ("greedy accuracy comparable: agpo-len vs grpo", "agpo-len", "grpo", "greedy_acc", "budget", False, rule_accuracy),
    ("preset: accuracy comparable: agpo-len vs grpo-preset", "agpo-len", "grpo-preset", "mean_at_k", "budget", False, rule_accuracy),
    ("preset: token cut >= 20%: agpo-len vs grpo-preset", "agpo-len", "grpo-preset", "reasoning_std", "budget", True, rule_tokens),
    ("preset: accuracy comparable: grpo (agpo base) vs grpo-preset", "grpo", "grpo-preset", "mean_at_k", "budget", False, rule_accuracy),
)  # fmt: skip
CLAIMS: dict[int, tuple[Claim, ...]] = {1: CLAIMS_V1, 2: CLAIMS_V2}


def verdict_rows(
    summaries: dict[str, dict[int, dict[str, Any]]], edition: int = 1
) -> list[dict[str, Any]]:
    rows = []
    for claim, arm, ref, key, view, log, rule in CLAIMS[edition]:
        if arm not in summaries or ref not in summaries:
            continue
        p = paired(summaries, arm, ref, key, view, log=log)
        rows.append({"claim": claim, "arm": arm, "ref": ref, "endpoint": key, "view": view,
                     "ratio": log, "stats": p, "verdict": rule(p)})  # fmt: skip
    return rows


def fmt(x: float | None, d: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def verdict_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| claim | endpoint (view) | per seed | mean [95% t-interval] | verdict |\n"
        "| --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for r in rows:
        p = r["stats"]
        kind = "ratio" if r["ratio"] else "diff"
        if p is None:
            per, ci = "-", "-"
        else:
            per = ", ".join(f"s{s}: {fmt(v)}" for s, v in sorted(p["per_seed"].items()))
            ci = f"{fmt(p['mean'])} [{fmt(p['lo'])}, {fmt(p['hi'])}], n={p['n']}"
            if p.get("dropped"):
                ci += " (dropped: " + ", ".join(f"s{s}" for s in p["dropped"]) + ")"
        lines.append(
            f"| {r['claim']} | {r['endpoint']} {kind} ({r['view']}) | {per} | {ci} "
            f"| **{r['verdict']}** |"
        )
    return head + "\n".join(lines) + "\n"


PER_SEED_KEYS = ("greedy_acc", "mean_at_k", "pass_at_k", "reasoning_std", "filler_std",
                 "scratch_std", "tokens_std")  # fmt: skip


def _pm(se: float | None) -> str:
    return "" if se is None else f" ± {se:.1f}"


def per_seed_table(summaries: dict[str, dict[int, dict[str, Any]]], view: str) -> str:
    head = (
        "| arm | seed | step | completions | greedy acc | mean@k | pass@k | reasoning (std) "
        "| filler | scratch | completion tokens | eval drawdown | noise ratio | all-correct "
        "| all-wrong |\n" + "| --- " * 15 + "|\n"
    )
    lines = []
    for arm, by_seed in summaries.items():
        for seed, s in sorted(by_seed.items()):
            v = s[view]
            lines.append(
                f"| {arm} | {seed} | {v['step']} | {v['completions']} | {fmt(v['greedy_acc'], 1)} "
                f"| {fmt(v['mean_at_k'], 1)}{_pm(v.get('mean_at_k_se'))} | {fmt(v['pass_at_k'], 1)} | {fmt(v['reasoning_std'])} "
                f"| {fmt(v['filler_std'])} | {fmt(v['scratch_std'])} | {fmt(v['tokens_std'])} "
                f"| {fmt(s['drawdown'], 1)} | {fmt(s['noise_ratio'])} | {fmt(s['all_correct'])} "
                f"| {fmt(s['all_wrong'])} |"
            )
    return head + "\n".join(lines) + "\n"


def spread_table(summaries: dict[str, dict[int, dict[str, Any]]]) -> str:
    """Per arm, over its own seeds (arms with more seeds are not paired here: the verdicts
    are): mean and seed std of greedy test accuracy and of mean@k, mean drawdown."""
    head = ("| arm | seeds | greedy acc mean | seed std | mean@k mean | seed std | drawdown mean "
            "| noise ratio mean |\n" + "| --- " * 8 + "|\n")  # fmt: skip
    lines = []

    def mean_sd(xs: list[float]) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else math.nan
        return f"{fmt(statistics.fmean(xs), 1)} | {fmt(sd, 1)}"

    for arm, by_seed in summaries.items():
        accs = [s["budget"]["greedy_acc"] for s in by_seed.values()]
        mk = [s["budget"]["mean_at_k"] for s in by_seed.values()]
        dd = [s["drawdown"] for s in by_seed.values()]
        nr = [s["noise_ratio"] for s in by_seed.values() if not math.isnan(s["noise_ratio"])]
        lines.append(
            f"| {arm} | {len(by_seed)} | {mean_sd(accs)} | {mean_sd(mk)} "
            f"| {fmt(statistics.fmean(dd), 1)} | {fmt(statistics.fmean(nr)) if nr else '-'} |"
        )
    return head + "\n".join(lines) + "\n"


def seed_matrix(summaries: dict[str, dict[int, dict[str, Any]]], key: str, view: str,
                digits: int = 1) -> str:  # fmt: skip
    """One endpoint, a row per seed and a column per arm ("-": the arm did not run that seed)."""
    arms = list(summaries)
    seeds = sorted({s for by_seed in summaries.values() for s in by_seed})
    head = "| seed | " + " | ".join(arms) + " |\n" + "| --- " * (len(arms) + 1) + "|\n"
    lines = []
    for seed in seeds:
        cells = [fmt(_value(summaries[a][seed], key, view), digits) if seed in summaries[a]
                 else "-" for a in arms]  # fmt: skip
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


SE_MAX = 1.5  # points: the second edition's bound on mean@k's standard error per run


def se_check(summaries: dict[str, dict[int, dict[str, Any]]]) -> str:
    """The runs whose mean@k standard error (either view) is above SE_MAX, or that none is."""
    ses = [(arm, seed, view, s[view]["mean_at_k_se"])
           for arm, by_seed in summaries.items() for seed, s in sorted(by_seed.items())
           for view in ("budget", "steps") if s[view].get("mean_at_k_se") is not None]  # fmt: skip
    if not ses:
        return "mean@k standard error: not recorded (first edition)\n"
    over = [f"{a} s{seed} ({v}): {se:.2f}" for a, seed, v, se in ses if se > SE_MAX]
    top = max(se for *_, se in ses)
    if over:
        return f"mean@k standard error above {SE_MAX} points: " + "; ".join(over) + "\n"
    return f"mean@k standard error <= {SE_MAX} points in every run (largest {top:.2f})\n"
