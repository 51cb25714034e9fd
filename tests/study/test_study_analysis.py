"""The study's statistics and decision rules (study/analysis.py), on hand-made numbers."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "study"))

import analysis


def test_drawdown_is_the_largest_fall_below_the_running_max() -> None:
    assert analysis.drawdown([0.5, 0.6, 0.55, 0.7, 0.62, 0.8]) == pytest.approx(8.0)
    assert analysis.drawdown([0.1, 0.2, 0.3]) == 0.0


def test_t_interval_uses_t_4303_for_three_seeds() -> None:
    m, lo, hi = analysis.t_interval([1.0, 2.0, 3.0])
    assert m == 2.0
    assert hi - m == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert m - lo == pytest.approx(hi - m)


def summaries(ref: list[float], arm: list[float], key: str) -> dict:
    def run(v: float) -> dict:
        return {"budget": {key: v}, "steps": {key: v}}

    return {"ref": {s: run(v) for s, v in enumerate(ref)},
            "arm": {s: run(v) for s, v in enumerate(arm)}}  # fmt: skip


def test_token_ratio_is_a_geometric_mean_of_per_seed_ratios() -> None:
    s = summaries([10.0, 20.0, 40.0], [5.0, 10.0, 20.0], "reasoning_std")
    p = analysis.paired(s, "arm", "ref", "reasoning_std", "budget", log=True)
    assert p is not None
    assert p["mean"] == pytest.approx(0.5) and p["lo"] == pytest.approx(0.5)
    assert analysis.rule_tokens(p) == "reproduced"
    same = summaries([10.0, 20.0, 40.0], [10.5, 19.0, 41.0], "reasoning_std")
    q = analysis.paired(same, "arm", "ref", "reasoning_std", "budget", log=True)
    assert analysis.rule_tokens(q) == "not reproduced"


@pytest.mark.parametrize(
    ("diffs", "verdict"),
    [
        ([0.0, 1.0, 2.0], "reproduced"),  # lower bound -1.5 >= -3
        ([-10.0, -9.0, -8.0], "not reproduced"),  # clearly worse by more than 3 points
        ([-10.0, 5.0, 2.0], "inconclusive"),  # wide interval
    ],
)
def test_accuracy_rule(diffs: list[float], verdict: str) -> None:
    s = summaries([50.0, 50.0, 50.0], [50.0 + d for d in diffs], "greedy_acc")
    assert (
        analysis.rule_accuracy(analysis.paired(s, "arm", "ref", "greedy_acc", "budget")) == verdict
    )


def test_stability_rule_calls_an_interval_within_2_points_no_gain() -> None:
    s = summaries([5.0, 5.0, 5.0], [5.1, 4.9, 5.0], "drawdown")
    p = analysis.paired(s, "arm", "ref", "drawdown", "budget")
    assert analysis.rule_stability(p) == "not reproduced"
    s = summaries([9.0, 10.0, 11.0], [2.0, 3.0, 3.5], "drawdown")
    assert (
        analysis.rule_stability(analysis.paired(s, "arm", "ref", "drawdown", "budget"))
        == "reproduced"
    )


def test_bucket_standardised_mean_weights_bit_counts_equally() -> None:
    buckets = {
        "5": {"correct": 10, "reasoning": 10.0},  # mean 1
        "14": {"correct": 4, "reasoning": 40.0},  # mean 10
        "13": {"correct": 2, "reasoning": 99.0},  # too few correct answers: left out
    }
    assert analysis.bucket_mean(buckets, "reasoning") == pytest.approx(5.5)
    assert analysis.pooled_mean(buckets, "reasoning") == pytest.approx(149 / 16)


def test_t975_matches_the_t_table_and_approaches_the_normal() -> None:
    assert analysis.t975(2) == 4.303 and analysis.t975(9) == 2.262
    assert abs(analysis.t975(40) - 2.021) < 1e-3 and abs(analysis.t975(120) - 1.980) < 1e-3
    assert analysis.t975(31) < analysis.t975(30)


def test_power_of_the_rules_grows_with_seeds_and_is_low_without_an_effect() -> None:
    import power

    acc = power.ENDPOINTS["mean@k non-inferiority (3 points)"]
    lo = power.power(acc[3], 0.0, 3.0, 4, log=False, sims=400)
    hi = power.power(acc[3], 0.0, 3.0, 20, log=False, sims=400)
    assert lo < hi and hi > 0.9
    tok = power.ENDPOINTS["reasoning-token cut (ratio <= 0.8)"]
    null = power.power(tok[3], 0.0, 0.4, 20, log=True, sims=400)  # no cut: rarely reproduced
    assert null < 0.05


def test_a_seed_without_a_positive_token_count_is_dropped_and_shown() -> None:
    s = summaries([10.0, 20.0, 40.0, 30.0], [5.0, 0.0, 20.0, 15.0], "reasoning_std")
    p = analysis.paired(s, "arm", "ref", "reasoning_std", "budget", log=True)
    assert p is not None and p["n"] == 3 and p["dropped"] == [1]
    rows = [{"claim": "c", "endpoint": "reasoning_std", "view": "budget", "ratio": True,
             "stats": p, "verdict": analysis.rule_tokens(p)}]  # fmt: skip
    assert "n=3 (dropped: s1)" in analysis.verdict_table(rows)


def test_se_check_names_the_runs_above_the_bound() -> None:
    def run(se: float) -> dict:
        return {"budget": {"mean_at_k_se": se}, "steps": {"mean_at_k_se": se}}

    ok = {"grpo": {0: run(0.9), 1: run(1.2)}}
    assert "<= 1.5 points in every run (largest 1.20)" in analysis.se_check(ok)
    bad = {"grpo": {0: run(0.9)}, "agpo": {3: run(1.7)}}
    assert "agpo s3 (budget): 1.70" in analysis.se_check(bad)


def test_seed_matrix_has_a_row_per_seed_and_a_dash_where_an_arm_did_not_run() -> None:
    s = summaries([10.0, 20.0], [5.0], "mean_at_k")
    m = analysis.seed_matrix(s, "mean_at_k", "budget")
    assert m.splitlines()[0] == "| seed | ref | arm |"
    assert "| 1 | 20.0 | - |" in m
