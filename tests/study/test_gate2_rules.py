"""The second-edition gate's rule set 2 (study/gate2.py): premise rules on every seed, the
first edition's rules on the mean over seeds; on hand-made figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "study"))

gate2 = pytest.importorskip("gate2")


def figures(**over: float) -> dict[str, float]:
    """A seed whose figures pass every rule, with ``over`` changed."""
    base = {
        "accuracy": 0.5, "spread": 0.4, "zero_var": 0.3, "all_correct": 0.1, "all_wrong": 0.1,
        "scratch_use": 0.5, "length_cv": 0.5, "forced_hard_gain": 0.2, "forced_easy_gain": 0.0,
        "easy_scratch_use": 0.4,
    }  # fmt: skip
    return {**base, **over}


def record(seed: int, gain: float = 0.1, **over: float) -> dict[str, Any]:
    return {"variant": "v", "seed": seed, "ruleset": 2, "gain": gain, "figures": figures(**over)}


def verdict(records: list[dict[str, Any]]) -> dict[str, bool]:
    return {name.split(" [")[0].strip(): ok
            for name, _, _, ok in gate2.judge(records, "bitcount-copy")}  # fmt: skip


def test_a_premise_rule_must_hold_on_every_seed() -> None:
    v = verdict([record(0), record(1, forced_hard_gain=0.09), record(2, forced_hard_gain=0.5)])
    assert not v["forced scratch - direct (11-14)"]  # the mean (0.26) would pass; seed 1 fails
    assert all(ok for k, ok in v.items() if k != "forced scratch - direct (11-14)")


def test_the_first_editions_rules_are_judged_on_the_mean() -> None:
    # one seed's accuracy outside 0.30-0.65, the mean inside: passes
    assert verdict([record(0, accuracy=0.7), record(1), record(2)])["accuracy (T=1)"]
    assert not verdict([record(0, accuracy=0.8), record(1, accuracy=0.7), record(2)])[
        "accuracy (T=1)"
    ]
    # the GRPO gain is a mean rule too
    assert not verdict([record(0, gain=0.0), record(1, gain=0.0), record(2, gain=0.1)])[
        "GRPO gain (greedy eval)"
    ]


def test_records_of_takes_rule_set_2_records_of_the_variant_latest_per_seed(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.jsonl"
    recs = [
        {**record(0), "ruleset": 1},  # an old rule set: ignored
        record(1, accuracy=0.1),
        record(1, accuracy=0.2),  # the later record of seed 1 wins
        {**record(2), "variant": "other"},
        record(0),
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    got = gate2.records_of("v", log)
    assert [r["seed"] for r in got] == [0, 1]
    assert got[1]["figures"]["accuracy"] == 0.2


def test_the_easy_set_adds_the_train_splits_short_strings() -> None:
    easy = gate2.easy_set("bitcount-copy")
    assert {p.difficulty for p in easy} == {2, 3, 4, 5, 6}
    assert {p.split for p in easy} == {"eval", "train"}
    assert len(easy) > 3 * 13  # bitcount's eval split alone holds 13 such strings
