"""The report's HTML: one self-contained page (styles inline, every image a base64 data URI),
so it can be mailed, attached to an issue or opened from a pod's copied volume as one file.

Pure string building; every text that comes from the records is escaped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from agpo_api.records import RunRecords
from agpo_cli.report.charts import Chart

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin: 28px 0 6px; border-bottom: 1px solid #ddd; }
table.facts td { padding: 1px 12px 1px 0; vertical-align: top; }
table.facts td:first-child { color: #666; }
pre { background: #f6f6f6; padding: 8px; font-size: 12px; overflow-x: auto; }
figure { margin: 0; }
figure img { max-width: 100%; }
p.caption, figcaption { color: #444; font-size: 13px; margin: 4px 0; }
p.skipped { color: #8a5a00; font-style: italic; }
div.grid { display: flex; flex-wrap: wrap; gap: 8px 14px; align-items: flex-start; }
section.chart { max-width: 100%; }
"""


@dataclass(frozen=True)
class Drawn:
    """A chart and its PNG (None: not drawn, its data absent)."""

    chart: Chart
    png: bytes | None


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def page(run: RunRecords, fixed: Sequence[Drawn], others: Sequence[Drawn]) -> str:
    job = (run.run or {}).get("job") or "unnamed job"
    charts = '<div class="grid">\n' + "\n".join(section(d) for d in fixed) + "\n</div>"
    body = [header(run), charts, others_section(others)]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>agpo report: {escape(str(job))}</title>\n<style>{STYLE}</style>\n"
        "</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def steps_text(records: Sequence[dict[str, Any]], total: Any = None) -> str:
    """``20 (steps 1-20 of 20)``; ``0`` for none."""
    if not records:
        return "0"
    of = f" of {total}" if isinstance(total, int) else ""
    return f"{len(records)} (steps {records[0]['step']}-{records[-1]['step']}{of})"


def header(run: RunRecords) -> str:
    head = run.run or {}
    total = run.steps[-1].get("totalSteps") if run.steps else None
    facts = [
        ("job", str(head.get("job") or "unknown (the records have no run header)")),
        ("records", str(run.path)),
        ("steps", steps_text(run.steps, total)),
        ("evaluations", steps_text(run.evals)),
        *((f"version of {k}", str(v)) for k, v in (head.get("versions") or {}).items()),
    ]
    rows = "\n".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in facts)
    spec = head.get("spec")
    spec_html = (
        "<details><summary>resolved spec (every default applied)</summary>"
        f"<pre>{escape(json.dumps(spec, indent=2))}</pre></details>"
        if spec is not None
        else '<p class="skipped">The records have no resolved spec (no run header).</p>'
    )
    title = escape(str(head.get("job") or "run"))
    return f'<h1>agpo run report: {title}</h1>\n<table class="facts">{rows}</table>\n{spec_html}'


def png_width(png: bytes, default: int = 560) -> int:
    """The pixel width in a PNG's header (its IHDR chunk), so that a chart's caption wraps at
    the chart's width."""
    return int.from_bytes(png[16:20], "big") if png[:8] == b"\x89PNG\r\n\x1a\n" else default


def section(drawn: Drawn) -> str:
    c = drawn.chart
    head = f'<h2 id="{escape(c.name)}">{escape(c.title)}</h2>'
    if drawn.png is None:
        body = f'<p class="skipped">Not drawn: {escape(c.missing)}.</p>'
        return f'<section class="chart" style="width: 560px">{head}\n{body}</section>'
    return (
        f'<section class="chart" style="width: {png_width(drawn.png)}px">{head}\n'
        f'<figure><img src="{data_uri(drawn.png)}" alt="{escape(c.title)}">'
        f'<p class="caption">{escape(c.caption)}</p></figure></section>'
    )


def small_figure(drawn: Drawn) -> str:
    c, png = drawn.chart, drawn.png or b""
    return (
        f'<figure id="{escape(c.name)}" style="width: {png_width(png)}px">'
        f'<img src="{data_uri(png)}" alt="{escape(c.title)}">'
        f"<figcaption><b>{escape(c.title)}</b>: {escape(c.caption)}</figcaption></figure>"
    )


def others_section(others: Sequence[Drawn]) -> str:
    head = '<h2 id="others">Every other figure</h2>'
    figures = [small_figure(d) for d in others if d.png is not None]
    if not figures:
        return f'{head}\n<p class="skipped">The records hold no other figure.</p>'
    intro = (
        '<p class="caption">Each further row of the metrics table that the records hold, '
        "captioned with the row's help.</p>"
    )
    return f'{head}\n{intro}\n<div class="grid">\n' + "\n".join(figures) + "\n</div>"
