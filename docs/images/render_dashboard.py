"""Draw docs/images/grafana-dashboard.png from the chart's Grafana dashboard JSON.

The picture follows ``charts/agpo-operator/dashboards/agpo.json`` (the one copy of the
dashboard): every panel at its grid position with its title, unit and PromQL queries. The
curves are ILLUSTRATIVE (synthetic, seeded), not a recording of a run; the image says so.

    python -m venv /tmp/vplot && /tmp/vplot/bin/pip install matplotlib
    /tmp/vplot/bin/python docs/images/render_dashboard.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "agpo-operator" / "dashboards" / "agpo.json"
OUT = Path(__file__).with_name("grafana-dashboard.png")

BG, PANEL, GRID, TEXT, MUTED = "#111217", "#181b1f", "#2c3235", "#d8d9da", "#8e8e8e"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#b877d9", "#f2495c"]
STEPS = np.arange(0, 200)


def series(expr: str, rng: np.random.Generator) -> np.ndarray:
    """A plausible, clearly synthetic curve for a query, by the metric it reads."""
    t = STEPS / STEPS[-1]
    noise = rng.normal(0, 1, STEPS.size)
    if "reward_mean" in expr:
        return -0.6 + 1.3 * (1 - np.exp(-3 * t)) + 0.05 * noise
    if "agpo_loss" in expr:
        return 0.02 * noise + 0.01 * np.sin(20 * t)
    if "agpo_kl" in expr:
        return 0.002 + 0.02 * t + 0.002 * np.abs(noise)
    if "completion_tokens_mean" in expr:
        return 900 - 380 * (1 - np.exp(-2.5 * t)) + 15 * noise
    if "zero_variance" in expr:
        return np.clip(0.22 - 0.12 * t + 0.03 * noise, 0, 1)
    if "ratio_mean" in expr:
        return 1.0 + 0.002 * noise
    if "ratio_min" in expr:
        return 0.78 + 0.05 * noise
    if "ratio_max" in expr:
        return 1.32 + 0.08 * noise
    if "clip_ratio_low" in expr:
        return np.clip(0.004 + 0.001 * noise, 0, 1)
    if "clip_ratio_high" in expr:
        return np.clip(0.006 + 0.0015 * noise, 0, 1)
    if "agpo_entropy" in expr:
        return 0.9 - 0.35 * (1 - np.exp(-2 * t)) + 0.02 * noise
    if "eval_accuracy" in expr:
        return np.clip(0.55 + 0.2 * (1 - np.exp(-3 * t)) + 0.01 * noise, 0, 1)
    if "eval_mean_at_k" in expr:
        return np.clip(0.46 + 0.17 * (1 - np.exp(-3 * t)) + 0.01 * noise, 0, 1)
    if "eval_pass_at_k" in expr:
        return np.clip(0.7 + 0.1 * (1 - np.exp(-3 * t)) + 0.01 * noise, 0, 1)
    if "eval_reasoning_tokens" in expr:
        return 6.0 - 3.4 * (1 - np.exp(-3 * t)) + 0.1 * noise
    if "step_duration" in expr:
        return 42 + 3 * noise - 6 * t
    if "weight_sync" in expr:
        return 1.8 + 0.15 * noise
    if "generation_tokens_total" in expr:
        return 5200 + 600 * np.sin(6 * t) + 150 * noise
    if "rollout_tokens_total" in expr:
        return 5000 + 600 * np.sin(6 * t) + 150 * noise
    if "num_requests_running" in expr:
        return np.clip(120 + 20 * np.sin(9 * t) + 5 * noise, 0, None)
    if "num_requests_waiting" in expr:
        return np.clip(30 * (np.sin(9 * t) > 0.6) + 3 * np.abs(noise), 0, None)
    if "kv_cache_usage" in expr:
        return np.clip(0.55 + 0.2 * np.sin(9 * t) + 0.03 * noise, 0, 1)
    return noise


def short(expr: str, limit: int = 95) -> str:
    expr = re.sub(r"\{[^}]*\}", "{…}", expr)
    expr = expr if len(expr) <= limit else expr[: limit - 1] + "…"
    return expr.replace("$", r"\$")  # not matplotlib mathtext


def main() -> int:
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    header = 3.0  # grid units for the title bar
    total = rows + header
    unit_w, unit_h = 0.75, 0.42  # inches per grid column / row
    fig = plt.figure(figsize=(24 * unit_w, total * unit_h), facecolor=BG)
    rng = np.random.default_rng(7)

    def box(x: float, y: float, w: float, h: float) -> list[float]:
        """Grid units (y down from the top) -> figure fraction (x0, y0, w, h)."""
        return [x / 24, 1 - (y + header + h) / total, w / 24, h / total]

    variables = "   ".join(
        f"{v.get('label', v['name'])}: All"
        for v in dash["templating"]["list"]
        if v["type"] != "datasource"
    )
    fig.text(
        0.01, 1 - 0.9 / total, dash["title"], color=TEXT, fontsize=18, weight="bold", va="center"
    )
    fig.text(
        0.01,
        1 - 1.9 / total,
        f"Data source: Prometheus   {variables}   Last 3 hours",
        color=MUTED,
        fontsize=10,
        va="center",
    )
    fig.text(
        0.99,
        1 - 1.4 / total,
        "ILLUSTRATIVE DATA: synthetic curves; panels, units and queries from "
        "charts/agpo-operator/dashboards/agpo.json",
        color="#ff9830",
        fontsize=11,
        ha="right",
        va="center",
        weight="bold",
    )

    for p in panels:
        g = p["gridPos"]
        if p["type"] == "row":
            fig.text(
                g["x"] / 24 + 0.005,
                1 - (g["y"] + header + 0.5) / total,
                p["title"],
                color=TEXT,
                fontsize=12,
                weight="bold",
                va="center",
            )
            continue
        # the panel: a background card with its title, the plot, then its queries
        gap = 0.1
        fig.patches.append(
            matplotlib.patches.FancyBboxPatch(
                (box(g["x"] + gap, g["y"] + gap, 0, 0)[0], box(0, g["y"] + g["h"] - gap, 0, 0)[1]),
                (g["w"] - 2 * gap) / 24,
                (g["h"] - 2 * gap) / total,
                boxstyle="round,pad=0,rounding_size=0.002",
                transform=fig.transFigure,
                facecolor=PANEL,
                edgecolor=GRID,
                linewidth=0.8,
                zorder=-1,
            )
        )
        fig.text(
            (g["x"] + 0.35) / 24,
            1 - (g["y"] + header + 0.55) / total,
            p["title"],
            color=TEXT,
            fontsize=10.5,
            weight="bold",
            va="center",
        )
        n_targets = len(p["targets"])
        bottom = 1.0 + 0.38 * n_targets
        ax = fig.add_axes(box(g["x"] + 1.25, g["y"] + 1.0, g["w"] - 1.55, g["h"] - 1.0 - bottom))
        ax.set_facecolor(PANEL)
        ax.set_zorder(1)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.tick_params(colors=MUTED, labelsize=7, length=0)
        ax.grid(color=GRID, linewidth=0.6)
        unit = p["fieldConfig"]["defaults"].get("unit", "short")
        lines = []
        for i, t in enumerate(p["targets"]):
            y = series(t["expr"], rng)
            legend = (
                t["legendFormat"]
                .replace("{{agpo_dev_job}}", "tiny-cpu")
                .replace("{{pod}}", "tiny-cpu-rollout-0")
            )
            color = COLORS[i % len(COLORS)]
            (ln,) = ax.plot(STEPS, y, color=color, linewidth=1.3, label=legend)
            ax.fill_between(STEPS, y, y.min(), color=color, alpha=0.08)
            lines.append(ln)
        if unit == "percentunit":
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
        elif unit == "s":
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1f s"))
        ax.set_xlim(STEPS[0], STEPS[-1])
        ax.set_xticks([0, 50, 100, 150, 199])
        ax.set_xticklabels(["-3h", "-2h15", "-1h30", "-45m", "now"])
        ax.legend(
            handles=lines,
            loc="upper right",
            fontsize=7,
            facecolor=PANEL,
            edgecolor=GRID,
            labelcolor=TEXT,
            framealpha=0.9,
        )
        for i, t in enumerate(p["targets"]):
            fig.text(
                (g["x"] + 0.35) / 24,
                1 - (g["y"] + header + g["h"] - 0.45 - 0.38 * (n_targets - 1 - i)) / total,
                f"{chr(65 + i)}  {short(t['expr'], int(g['w'] * 11))}",
                color=MUTED,
                fontsize=6.8,
                family="monospace",
                va="center",
            )

    fig.savefig(OUT, dpi=80, facecolor=BG)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
