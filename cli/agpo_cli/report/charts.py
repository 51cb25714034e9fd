"""What the run report plots, as data: a run's records (:class:`agpo_api.records.RunRecords`)
become :class:`Chart` values, one per question, drawn by :mod:`agpo_cli.report.draw`.

Pure (no matplotlib), so the choice of figures is tested without drawing anything. The fixed
charts answer the questions of issue #22; every other figure of the metrics table that the
records hold gets a small chart of its own (:func:`other_charts`), so a row a later issue adds
to :mod:`agpo_api.metrics_table` shows up in the report without a change here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agpo_api.metrics_table import METRICS, Metric
from agpo_api.records import RunRecords

Record = dict[str, Any]
#: Why an empty chart is not drawn, unless the chart says better.
NO_FIGURES = "the records hold none of its figures"
Style = Literal["line", "points", "bar"]  # bars of a panel are stacked in order


@dataclass(frozen=True)
class Line:
    """One series: ``ys`` against the steps ``xs`` (records without the figure are left out)."""

    label: str
    xs: tuple[int, ...]
    ys: tuple[float, ...]
    style: Style = "line"


@dataclass(frozen=True)
class Panel:
    """One set of axes."""

    ylabel: str
    lines: tuple[Line, ...]
    integer: bool = False  # whole numbers (policy versions): whole ticks

    @property
    def empty(self) -> bool:
        return not any(line.xs for line in self.lines)


@dataclass(frozen=True)
class Chart:
    """One image of the report and its caption (one sentence)."""

    name: str  # the HTML anchor
    title: str
    caption: str
    panels: tuple[Panel, ...]
    shows: frozenset[str]  # the wire names it covers: no small chart of their own
    missing: str = NO_FIGURES  # why it is not drawn when empty
    small: bool = False

    @property
    def empty(self) -> bool:
        return all(panel.empty for panel in self.panels)


def number(record: Record, key: str) -> float | None:
    """``record[key]`` as a float; None where it is absent, null or not a number."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def series(records: Sequence[Record], key: str, style: Style = "line") -> Line:
    """The figure ``key`` of each record that has it, against the record's step."""
    points = [(r["step"], y) for r in records if (y := number(r, key)) is not None]
    return Line(key, tuple(x for x, _ in points), tuple(y for _, y in points), style)


def labelled(records: Sequence[Record], key: str) -> tuple[Line, ...]:
    """A labelled figure (``{"accuracy": 0.7, "length": 0.02}``): one line per label, in the
    order the labels first appear."""
    dicts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), dict)]
    labels = dict.fromkeys(label for _, d in dicts for label in d)
    return tuple(series([{"step": s, lab: d.get(lab)} for s, d in dicts], lab) for lab in labels)


def _chart(
    name: str,
    title: str,
    caption: str,
    *panels: Panel,
    shows: frozenset[str] | None = None,
    missing: str = NO_FIGURES,
) -> Chart:
    """A chart that covers the keys its lines were read from (a line's label is its key),
    unless ``shows`` says otherwise."""
    keys = shows or frozenset(line.label for p in panels for line in p.lines)
    return Chart(name, title, caption, panels, keys, missing)


# --------------------------------------------------------------------------- fixed charts
def reward_chart(run: RunRecords) -> Chart:
    return _chart(
        "reward",
        "Reward and training accuracy",
        "Mean total reward (rewardMean) and the fraction of correct completions (accuracy) of "
        "each step's training batch, sampled at the training temperature.",
        Panel("per step", (series(run.steps, "rewardMean"), series(run.steps, "accuracy"))),
    )


def eval_chart(run: RunRecords) -> Chart:
    keys = ("evalAccuracy", "evalMeanAtK", "evalPassAtK")
    return _chart(
        "eval",
        "Held-out evaluation",
        "On the held-out evaluation prompts, after the step on the x axis: greedy accuracy "
        "(evalAccuracy), mean accuracy of the k sampled answers (evalMeanAtK) and the fraction "
        "of prompts with a correct one among them (evalPassAtK).",
        Panel("accuracy", tuple(series(run.evals, k, style="points") for k in keys)),
        missing="the records hold no evaluation (the job has none, or none has finished yet)",
    )


def tokens_chart(run: RunRecords) -> Chart:
    keys = ("correctReasoningTokensMean", "correctCompletionTokensMean", "completionTokensMean")
    return _chart(
        "tokens",
        "Completion and reasoning length",
        "Mean tokens per step of the correct completions before the answer marker "
        "(correctReasoningTokensMean) and in all (correctCompletionTokensMean), of every "
        "completion (completionTokensMean), and the reasoning tokens of correct greedy "
        "evaluation answers (evalReasoningTokens, points).",
        Panel(
            "tokens",
            (
                *(series(run.steps, k) for k in keys),
                series(run.evals, "evalReasoningTokens", style="points"),
            ),
        ),
    )


def groups_chart(run: RunRecords) -> Chart:
    return _chart(
        "groups",
        "All-correct and all-wrong groups",
        "Fraction of each step's prompt groups whose completions were all correct "
        "(allCorrectFraction) or all wrong (allWrongFraction): the two kinds of group without "
        "a learning signal under GRPO's advantages.",
        Panel(
            "fraction of groups",
            (series(run.steps, "allCorrectFraction"), series(run.steps, "allWrongFraction")),
        ),
    )


#: The step-time bands, bottom to top: a label and the keys whose sum it is.
TIME_BANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("rollout", ("rolloutSeconds", "rewardSeconds")),
    ("train", ("trainSeconds",)),
    ("push", ("weightSyncSeconds",)),
)


def time_bands(step: Record) -> dict[str, float]:
    """One step's wall time split into the bands and ``other``: ``stepSeconds`` minus the
    bands, floored at 0 (a prefetched batch was generated during the previous update, so the
    bands may add up to more than the step)."""
    bands = {label: sum(number(step, k) or 0.0 for k in keys) for label, keys in TIME_BANDS}
    total = number(step, "stepSeconds") or 0.0
    return bands | {"other": max(0.0, total - sum(bands.values()))}


def time_chart(run: RunRecords) -> Chart:
    timed = [s for s in run.steps if number(s, "stepSeconds") is not None]
    xs = tuple(s["step"] for s in timed)
    split = [time_bands(s) for s in timed]
    labels = [label for label, _ in TIME_BANDS] + ["other"]
    bars = tuple(Line(b, xs, tuple(d[b] for d in split), "bar") for b in labels)
    return _chart(
        "time",
        "Where a step's time goes",
        "Wall seconds of each step, stacked: rollout is the whole collection of the batch, "
        "generation (rolloutSeconds) plus reward scoring (rewardSeconds), then the update "
        "(trainSeconds), the weight push to vLLM (weightSyncSeconds) and the rest of the step "
        "(stepSeconds minus the three, floored at 0: broadcast, checkpoint, report); the black "
        "line is stepSeconds.",
        Panel("seconds", (*bars, series(run.steps, "stepSeconds"))),
        shows=frozenset({"stepSeconds", *(k for _, keys in TIME_BANDS for k in keys)}),
    )


def versions_chart(run: RunRecords) -> Chart:
    return _chart(
        "versions",
        "Staleness and served version",
        "Left: policy versions between the weights that generated each step's batch and the "
        "policy it trained (batchStaleness, at most training.maxStaleness); right: the version "
        "that generated the batch (rolloutPolicyVersion) and the version after the step "
        "(policyVersion).",
        Panel("versions behind", (series(run.steps, "batchStaleness"),), integer=True),
        Panel(
            "policy version",
            (series(run.steps, "rolloutPolicyVersion"), series(run.steps, "policyVersion")),
            integer=True,
        ),
    )


def sync_chart(run: RunRecords) -> Chart:
    return _chart(
        "sync",
        "Weight sync",
        "Seconds each step spent pushing the new weights to the vLLM servers "
        "(weightSyncSeconds; 0 on a step that pushed nothing).",
        Panel("seconds", (series(run.steps, "weightSyncSeconds", style="points"),)),
    )


FIXED: tuple[Callable[[RunRecords], Chart], ...] = (
    reward_chart,
    eval_chart,
    tokens_chart,
    groups_chart,
    time_chart,
    sync_chart,
    versions_chart,
)


def fixed_charts(run: RunRecords) -> list[Chart]:
    return [make(run) for make in FIXED]


# --------------------------------------------------------------------------- the other figures
#: Never a chart of their own: the x axis of every chart, and the step count of the header.
AXES = frozenset({"step", "evalStep", "totalSteps"})


def metric_panel(run: RunRecords, metric: Metric) -> Panel:
    """One metrics-table row from the records its source writes (a labelled row: one line
    per label)."""
    records = run.evals if metric.source == "eval" else run.steps
    if metric.labels or any(isinstance(r.get(metric.wire), dict) for r in records):
        return Panel(metric.wire, labelled(records, metric.wire))
    return Panel(metric.wire, (series(records, metric.wire),))


def other_charts(
    run: RunRecords, shown: Iterable[str], table: Sequence[Metric] = METRICS
) -> list[Chart]:
    """A small chart per row of ``table`` that the records hold and no chart in ``shown``
    covers, in table order, captioned with the row's help."""
    skip = AXES | frozenset(shown)
    panels = [(m, metric_panel(run, m)) for m in table if m.wire not in skip]
    return [
        Chart(m.wire, m.wire, m.help, (panel,), frozenset({m.wire}), small=True)
        for m, panel in panels
        if not panel.empty
    ]


def covered(charts: Iterable[Chart]) -> frozenset[str]:
    return frozenset(key for chart in charts for key in chart.shows)
