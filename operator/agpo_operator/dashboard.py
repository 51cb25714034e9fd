"""The Grafana dashboard of the chart (``charts/agpo-operator/dashboards/agpo.json``), built
from the trainer's metrics table (:mod:`agpo_api.metrics_table`): a training panel names table
rows, and each row's query follows from its kind and its Prometheus name (a gauge as it is, a
histogram as the mean of its rate, a counter as its rate), so a renamed or removed figure
breaks ``make verify``, never a user's dashboard. The vLLM panels read vLLM's own series.
``make generate`` writes the file; pure (no I/O).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agpo_api.metrics_table import BY_FIELD, Metric

SELECTOR = '{namespace=~"$namespace", agpo_dev_job=~"$job"}'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Panel:
    """A time-series panel: table rows (``fields``) or raw PromQL (``exprs``), one target each."""

    title: str
    description: str
    fields: tuple[str, ...] = ()
    exprs: tuple[str, ...] = ()  # for series that are not the trainer's (vLLM)
    legends: tuple[str, ...] = ()  # after the job name, one per target; none: the job name
    unit: str = "short"
    width: int = 12
    legend: str = "{{agpo_dev_job}}"


def query(m: Metric) -> str:
    """The PromQL of a table row (for the selected namespaces and jobs)."""
    if m.kind == "histogram":

        def rate(part: str) -> str:
            return f"rate({m.series}_{part}{SELECTOR}[$__rate_interval])"

        return f"{rate('sum')} / {rate('count')}"
    if m.kind == "counter":
        return f"sum by (agpo_dev_job) (rate({m.series}_total{SELECTOR}[$__rate_interval]))"
    return m.series + SELECTOR


TRAINING: tuple[Panel, ...] = (
    Panel("Reward (mean)", "Mean reward of the step's completions.", ("reward_mean",)),
    Panel("Policy loss", "AGPO/GRPO loss of the step (the KL term included).", ("loss",)),
    Panel("KL to reference", "k3 KL estimate against the reference policy; 0 when beta is 0.",
          ("kl",), width=8),
    Panel("Reasoning tokens per completion", "Mean completion length in tokens; AGPO's length "
          "reward pushes it down.", ("completion_tokens_mean",), width=8),
    Panel("Zero-variance groups", "Share of prompt groups whose rewards are all equal: no GRPO "
          "signal there (AGPO gives them +-1).", ("zero_variance_fraction",),
          unit="percentunit", width=8),
    Panel("Importance ratio", "Mean, smallest and largest ratio pi/pi_old over the step's "
          "included tokens: far from 1, the update is off-policy.",
          ("ratio_mean", "ratio_min", "ratio_max"), legends=("mean", "min", "max"), width=8),
    Panel("Clipped tokens", "Tokens whose ratio the clip cut, below (A < 0) and above (A > 0).",
          ("clip_ratio_low", "clip_ratio_high"), legends=("low", "high"), unit="percentunit",
          width=8),
    Panel("Entropy", "Mean token entropy of the policy on the step's completions.",
          ("entropy",), width=8),
    Panel("Rollout vs trainer", "With algorithm.rolloutCorrection: the k3 KL between the "
          "rollout engine's and the trainer's probabilities of the sampled tokens, the mean "
          "correction weight and the share of tokens it dropped (mis).",
          ("rollout_trainer_kl", "is_weight_mean", "is_masked_ratio"),
          legends=("KL", "weight mean", "dropped"), width=8),
    Panel("Step time", "Mean wall time of a training step (rollout + update + weight sync).",
          ("step_seconds",), unit="s"),
    Panel("Weight-sync time", "Mean time to push new weights to the vLLM servers.",
          ("weight_sync_seconds",), unit="s"),
    Panel("Held-out evaluation", "Latest evaluation (spec.evaluation) on held-out prompts: "
          "greedy accuracy, mean@k and pass@k of the k samples.",
          ("eval_accuracy", "eval_mean_at_k", "eval_pass_at_k"),
          legends=("greedy", "mean@k", "pass@k"), unit="percentunit"),
    Panel("Eval reasoning tokens (correct answers)", "Mean tokens before the answer marker of "
          "the correct greedy evaluation answers.", ("eval_reasoning_tokens",)),
)  # fmt: skip

ROLLOUT: tuple[Panel, ...] = (
    Panel("vLLM generation throughput (tokens/s)", "Generated tokens per second, summed over "
          "the job's vLLM servers (vllm:generation_tokens_total), and as the trainer counts "
          "them.", ("rollout_tokens",),
          exprs=("sum by (agpo_dev_job) (rate(vllm:generation_tokens_total"
                 + SELECTOR + "[$__rate_interval]))",),
          legends=("vLLM", "trainer"), width=8),
    Panel("vLLM queue", "Requests running and waiting on the job's vLLM servers "
          "(vllm:num_requests_running, vllm:num_requests_waiting).",
          exprs=(f"sum by (agpo_dev_job) (vllm:num_requests_running{SELECTOR})",
                 f"sum by (agpo_dev_job) (vllm:num_requests_waiting{SELECTOR})"),
          legends=("running", "waiting"), width=8),
    Panel("vLLM KV-cache usage", "KV-cache usage per vLLM server (vllm:kv_cache_usage_perc).",
          exprs=(f"vllm:kv_cache_usage_perc{SELECTOR}",), unit="percentunit", width=8,
          legend="{{pod}}"),
)  # fmt: skip

SECTIONS = (("Training (trainer rank 0, agpo_*)", TRAINING), ("Rollout (vLLM servers, vllm:*)",
            ROLLOUT))  # fmt: skip


def targets(p: Panel) -> list[dict[str, Any]]:
    """The panel's queries: raw ones first, then the table rows'."""
    exprs = [*p.exprs, *(query(BY_FIELD[f]) for f in p.fields)]
    out = []
    for i, expr in enumerate(exprs):
        legend = f"{p.legend} {p.legends[i]}" if p.legends else p.legend
        out.append({"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
                    "legendFormat": legend})  # fmt: skip
    return out


def defaults(unit: str) -> dict[str, Any]:
    """A panel's field defaults: a fraction is drawn on [0, 1]."""
    out: dict[str, Any] = {
        "unit": unit, "custom": {"lineWidth": 2, "fillOpacity": 10, "showPoints": "never"}
    }  # fmt: skip
    return out | ({"min": 0, "max": 1} if unit == "percentunit" else {})


def timeseries(p: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    series = [*(e.split("{")[0].split("(")[-1] for e in p.exprs)]
    series += [BY_FIELD[f].series for f in p.fields]
    return {
        "type": "timeseries", "id": panel_id, "title": p.title,
        "description": f"{p.description.rstrip('.')} ({', '.join(series)}).",
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": p.width, "h": 8},
        "fieldConfig": {"defaults": defaults(p.unit), "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": targets(p),
    }  # fmt: skip


def panels() -> list[dict[str, Any]]:
    """Every section's row header, then its panels left to right, wrapping at 24 columns."""
    out: list[dict[str, Any]] = []
    y = 0
    for title, section in SECTIONS:
        out.append({"type": "row", "id": len(out) + 1, "title": title, "collapsed": False,
                    "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})  # fmt: skip
        y, x = y + 1, 0
        for p in section:
            if x + p.width > 24:
                y, x = y + 8, 0
            out.append(timeseries(p, len(out) + 1, x, y))
            x += p.width
        y += 8
    return out


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": name}, "definition": query, "includeAll": True,
            "multi": True, "allValue": ".*", "current": {}, "refresh": 2, "sort": 1}  # fmt: skip


def dashboard() -> dict[str, Any]:
    """The whole dashboard document."""
    reward = BY_FIELD["reward_mean"].series
    return {
        "__inputs": [], "uid": "agpo-training", "title": "AGPO training",
        "description": "AGPOJob training and rollout metrics (agpo-operator chart, "
        "dashboards/agpo.json).",
        "tags": ["agpo", "rl", "vllm"], "timezone": "browser", "editable": True,
        "graphTooltip": 1, "refresh": "30s", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0, "refresh": 1},
            _variable("namespace", "Namespace", f"label_values({reward}, namespace)"),
            _variable("job", "AGPOJob",
                      f'label_values({reward}{{namespace=~"$namespace"}}, agpo_dev_job)'),
        ]},
        "annotations": {"list": []},
        "panels": panels(),
    }  # fmt: skip


def dashboard_json() -> str:
    """The file's text (what ``make generate`` writes)."""
    return json.dumps(dashboard(), indent=2) + "\n"
