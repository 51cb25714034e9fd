"""``agpo report``: a run's records (:mod:`agpo_api.records`) as one self-contained HTML page.

:mod:`~agpo_cli.report.charts` decides what to plot (pure data), :mod:`~agpo_cli.report.draw`
draws a chart as a PNG (matplotlib, Agg), :mod:`~agpo_cli.report.page` builds the page around
them; this module reads and writes the files. Needs matplotlib (the ``report`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agpo_api.metrics_table import METRICS, Metric
from agpo_api.records import RunRecords, find_records, read_records
from agpo_cli.report.charts import covered, fixed_charts, other_charts
from agpo_cli.report.draw import png
from agpo_cli.report.page import Drawn, page

#: The report's name, next to the records file unless an output is given.
REPORT_FILE = "report.html"


def build(run: RunRecords, table: Sequence[Metric] = METRICS) -> str:
    """The report's HTML: the fixed charts (an empty one as a note), then a small chart per
    further row of ``table`` that the records hold."""
    fixed = fixed_charts(run)
    others = other_charts(run, covered(fixed), table)
    return page(
        run,
        [Drawn(c, None if c.empty else png(c)) for c in fixed],
        [Drawn(c, png(c)) for c in others],
    )


def write_report(run: RunRecords, output: Path | None = None) -> Path:
    """Write the report (to ``output``, or ``report.html`` next to the records); its path."""
    path = output or run.path.with_name(REPORT_FILE)
    path.write_text(build(run), encoding="utf-8")
    return path


def report_for(where: Path, output: Path | None = None) -> Path:
    """The report of a run directory, checkpoint directory or records file
    (:func:`agpo_api.records.find_records`); raises ``RecordsError`` for what it cannot read."""
    return write_report(read_records(find_records(where)), output)
