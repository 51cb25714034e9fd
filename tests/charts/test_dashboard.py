"""The Grafana dashboard (charts/agpo-operator/dashboards/agpo.json, its one copy).

It must chart what the issue lists (reward, loss, KL, reasoning tokens, zero-variance ratio,
step time, weight-sync time, vLLM throughput and queue), with a layout Grafana accepts, and
every `agpo_*` metric it queries must be a row of the trainer's metrics table
(agpo_api.metrics_table, from which `make generate` builds the training panels; the trainer's
own end-to-end naming test shows those rows are what it exports).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from chartlib import CHART, ROOT

DASHBOARD = CHART / "dashboards" / "agpo.json"
PICTURE = ROOT / "docs" / "images" / "grafana-dashboard.png"

#: Each thing the dashboard must show -> a metric its queries must read.
REQUIRED = {
    "reward": "agpo_reward_mean",
    "loss": "agpo_loss",
    "KL": "agpo_kl",
    "reasoning tokens": "agpo_completion_tokens_mean",
    "zero-variance ratio": "agpo_zero_variance_fraction",
    "step time": "agpo_step_duration_seconds",
    "weight-sync time": "agpo_weight_sync_duration_seconds",
    "vLLM throughput": "vllm:generation_tokens_total",
    "vLLM queue (running)": "vllm:num_requests_running",
    "vLLM queue (waiting)": "vllm:num_requests_waiting",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in d["panels"] if p["type"] != "row"]


def exprs(d: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(d) for t in p["targets"]]


def test_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "agpo-training"
    assert dashboard["title"] == "AGPO training"
    assert isinstance(dashboard["schemaVersion"], int)
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "namespace", "job"]


@pytest.mark.parametrize("what", sorted(REQUIRED))
def test_shows_what_the_issue_asks(dashboard: dict[str, Any], what: str) -> None:
    metric = REQUIRED[what]
    assert any(
        re.search(rf"{re.escape(metric)}(_sum|_count|_bucket)?\{{", e) for e in exprs(dashboard)
    ), what


def test_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        own = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not own & cells, f"{p['title']} overlaps another panel"
        cells |= own
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"] and p["description"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))


def test_queries_filter_by_namespace_and_job(dashboard: dict[str, Any]) -> None:
    for e in exprs(dashboard):
        assert 'namespace=~"$namespace"' in e and 'agpo_dev_job=~"$job"' in e, e
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e


def test_histograms_are_read_as_rates(dashboard: dict[str, Any]) -> None:
    for e in exprs(dashboard):
        for m in ("agpo_step_duration_seconds", "agpo_weight_sync_duration_seconds"):
            if m in e:
                assert f"rate({m}_sum" in e and f"rate({m}_count" in e, e


def test_agpo_metrics_are_rows_of_the_metrics_table(dashboard: dict[str, Any]) -> None:
    from agpo_api.metrics_table import METRICS

    exported = {m.series for m in METRICS if m.prometheus}
    used = {
        re.sub(r"_(sum|count|bucket|total)$", "", m)
        for e in exprs(dashboard)
        for m in re.findall(r"agpo_[a-z0-9_]+", e)
    }
    used -= {"agpo_dev_job"}  # a label, not a metric
    missing = used - exported
    assert not missing, f"the dashboard queries metrics the trainer does not export: {missing}"
    assert {"agpo_ratio_min", "agpo_clip_ratio_high", "agpo_entropy"} <= used


def test_rendered_picture_exists() -> None:
    assert PICTURE.exists() and PICTURE.stat().st_size > 10_000
    assert PICTURE.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "images/grafana-dashboard.png" in (ROOT / "docs" / "operate.md").read_text()
