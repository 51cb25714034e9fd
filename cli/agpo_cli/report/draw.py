"""A :class:`~agpo_cli.report.charts.Chart` as PNG bytes (matplotlib's Agg canvas).

The figures are made with :class:`matplotlib.figure.Figure` and an explicit Agg canvas rather
than pyplot: no GUI backend is chosen or needed (a server, a pod), and no global figure state
is left behind in the process that calls it (``agpo run``).
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from agpo_cli.report.charts import Chart, Line, Panel

#: Inches per panel (width, height) at DPI: the page shows big charts at about 560 pixels.
BIG, SMALL, DPI = (5.6, 3.4), (3.6, 2.4), 100
#: Steps above which stacked bars become stacked areas (thousands of bars draw slowly and
#: are thinner than a pixel anyway).
MANY_BARS = 200
#: Points above which a "points" series is drawn as a plain line.
MANY_POINTS = 60


def png(chart: Chart) -> bytes:
    """The chart's non-empty panels side by side, its title on top."""
    panels = [p for p in chart.panels if not p.empty]
    if not panels:
        raise ValueError(f"chart {chart.name} has no data to draw")
    w, h = SMALL if chart.small else BIG
    fig = Figure(figsize=(w * len(panels), h), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        draw_panel(ax, panel, small=chart.small)
    if chart.small:  # a big chart's title is the page's heading; a small one names its row
        axes[0].set_title(chart.title, fontsize=9)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def draw_panel(ax: Any, panel: Panel, *, small: bool = False) -> None:
    """Bars stacked in order (a shared bottom per step), then lines and points on top."""
    lines = [line for line in panel.lines if line.xs]
    bottom: dict[int, float] = {}
    for line in (li for li in lines if li.style == "bar"):
        base = [bottom.get(x, 0.0) for x in line.xs]
        top = [b + y for b, y in zip(base, line.ys, strict=True)]
        if len(line.xs) > MANY_BARS:
            ax.fill_between(line.xs, base, top, step="mid", lw=0, label=line.label)
        else:
            ax.bar(line.xs, line.ys, bottom=base, width=0.8, label=line.label)
        bottom |= dict(zip(line.xs, top, strict=True))
    for line in (li for li in lines if li.style != "bar"):
        draw_line(ax, line, over_bars=bool(bottom))
    ax.set_xlabel("step", fontsize=8)
    if not small:
        ax.set_ylabel(panel.ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # Plain tick labels: an offset ("1e-6+9.9999e-1") is easy to misread on a small chart.
    ax.ticklabel_format(axis="y", useOffset=False)
    if panel.integer:  # versions: whole ticks, and a flat 0 shown as 0, not in a +-0.04 band
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-0.5, max(1.0, *(y for li in lines for y in li.ys)) + 0.5)
    ax.grid(alpha=0.3)
    if len(lines) > 1 or not small:
        ax.legend(fontsize=7)


def draw_line(ax: Any, line: Line, *, over_bars: bool) -> None:
    # Points for sparse figures (evaluations, a few steps; on a long run they would merge
    # into a thick line), and for a single point, which a line alone would not show.
    sparse = line.style == "points" and len(line.xs) <= MANY_POINTS
    marker = "o" if sparse or len(line.xs) == 1 else None
    style = "-" if line.style == "line" or len(line.xs) > 1 else "none"
    colour = {"color": "black"} if over_bars else {}
    ax.plot(line.xs, line.ys, marker=marker, ls=style, lw=1.4, ms=4, label=line.label, **colour)
