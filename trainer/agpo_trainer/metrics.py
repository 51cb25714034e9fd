"""The trainer's Prometheus metrics and its JSON ``/status``, served by rank 0 on one port.

Every series is a row of the metrics table (:mod:`agpo_api.metrics_table`), named by its
scheme: one prefix (``agpo_``), base units (seconds, tokens), ``_total`` for counters, no
colons (reserved for recording rules). ``/status`` is what the operator polls to fill
``status.step``, ``status.rewardMean``, ... (schema: :class:`agpo_api.progress.TrainerProgress`).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agpo_api.layout import METRICS_PATH, STATUS_PATH
from agpo_api.metrics_table import METRICS, Metric, rows
from agpo_api.progress import TrainerProgress
from agpo_trainer.stats import EvalStats, StepStats

Series = Counter | Gauge | Histogram


def _series(m: Metric, registry: CollectorRegistry) -> Series:
    """The Prometheus series of a table row."""
    if m.kind == "counter":
        return Counter(m.series, m.help, list(m.labels), registry=registry)
    if m.kind == "histogram":
        buckets = m.buckets if m.buckets is not None else Histogram.DEFAULT_BUCKETS
        return Histogram(m.series, m.help, list(m.labels), buckets=buckets, registry=registry)
    return Gauge(m.series, m.help, list(m.labels), registry=registry)


def _put(series: Series, value: float) -> None:
    """Gauges are set, counters incremented, histograms observed."""
    if isinstance(series, Gauge):
        series.set(value)
    elif isinstance(series, Counter):
        series.inc(value)
    else:
        series.observe(value)


@dataclass
class TrainerMetrics:
    """Every Prometheus series of the metrics table, in its own registry (no global state).

    A step or evaluation record sets the series of its rows; the figures that happen outside
    a record (a push, a skipped prompt) are reported where they happen with :meth:`add`.
    """

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.series = {m.field: _series(m, self.registry) for m in METRICS if m.prometheus}

    def add(self, name: str, value: float = 1.0, *, label: str | None = None) -> None:
        """An event figure: set a gauge, increment a counter or observe a histogram (of the
        row's one label value ``label`` when the row has labels)."""
        series = self.series[name]
        _put(series if label is None else series.labels(label), value)

    def _record(self, rows_: tuple[Metric, ...], value: Callable[[Metric], Any]) -> None:
        for m in rows_:
            figure = value(m)
            if figure is None or not m.prometheus or m.event:
                continue
            if m.labels:  # a labelled figure is a mapping: label value -> figure
                for label, v in figure.items():
                    _put(self.series[m.field].labels(label), v)
            else:
                _put(self.series[m.field], figure)

    def record_step(self, s: StepStats) -> None:
        """Publish a finished step (each series from the stats field of its row)."""
        self.add("steps")
        self._record(rows("step", "rollout", "update"), s.value)

    def record_eval(self, e: EvalStats) -> None:
        """Publish an evaluation (a figure it has not, e.g. pass@k with k = 0, is left)."""
        self._record(rows("eval"), e.value)


class StatusBoard:
    """The latest :class:`TrainerProgress`, what ``/status`` serves (thread-safe)."""

    def __init__(self, progress: TrainerProgress) -> None:
        self._lock = threading.Lock()
        self._progress = progress

    def update(self, progress: TrainerProgress) -> None:
        """Overwrite the fields ``progress`` sets; the others keep their values."""
        with self._lock:
            self._progress = self._progress.model_copy(
                update=progress.model_dump(exclude_unset=True)
            )

    def snapshot(self) -> dict[str, Any]:
        """The wire form: camelCase, unset fields left out."""
        with self._lock:
            return self._progress.to_wire()


def serve(
    metrics: TrainerMetrics, board: StatusBoard, port: int, host: str = "0.0.0.0"
) -> ThreadingHTTPServer:
    """Serve ``/metrics`` (Prometheus text) and ``/status`` (JSON) in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == METRICS_PATH:
                body, ctype = generate_latest(metrics.registry), CONTENT_TYPE_LATEST
            elif path == STATUS_PATH:
                body, ctype = json.dumps(board.snapshot()).encode(), "application/json"
            elif path in ("/healthz", "/health"):
                body, ctype = b"ok", "text/plain"
            else:
                self.send_error(404)
                return
            # A poller that gave up (agpo run stopping, a scrape timeout) closes early; that is
            # not an error worth a traceback in the trainer's log.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would flood the trainer log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
