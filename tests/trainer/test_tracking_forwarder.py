"""The trackers' forwarder: the loop's put never blocks, a tracker that is slow, failing or
unreachable has its records dropped and counted, and the end of a run waits a bounded time."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from agpo_api.models import MlflowSpec
from agpo_trainer.metrics import TrainerMetrics
from agpo_trainer.rollout.server import free_port
from agpo_trainer.tracking.forwarder import Forwarder
from agpo_trainer.tracking.mlflow_tracker import MlflowTracker


class Stuck:
    """A tracker whose every call waits until released (a server that stopped answering)."""

    name = "stuck"

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.calls: list[str] = []

    def start(self, header: dict[str, Any]) -> None:
        self.entered.set()
        self.release.wait()
        self.calls.append("start")

    def log(self, kind: str, record: dict[str, Any]) -> None:
        self.calls.append(f"log {record['step']}")

    def finish(self, checkpoint: Path | None) -> None:
        self.calls.append("finish")


def counted(metrics: TrainerMetrics, tracker: str) -> float:
    text = generate_latest(metrics.registry).decode()
    found = re.search(rf'^agpo_tracker_dropped_total\{{tracker="{tracker}"\}} (\S+)', text, re.M)
    return float(found.group(1)) if found else 0.0


def drop_counter(metrics: TrainerMetrics) -> Any:
    return lambda tracker, n: metrics.add("tracker_dropped", n, label=tracker)


def test_a_stuck_tracker_never_blocks_and_its_overflow_is_counted() -> None:
    metrics, tracker = TrainerMetrics(), Stuck()
    fwd = Forwarder(tracker, size=3, on_drop=drop_counter(metrics))
    started = time.perf_counter()
    fwd.put(("start", {}))
    assert tracker.entered.wait(5)  # the thread holds "start" now
    for step in range(1, 11):
        fwd.put(("log", "step", {"step": step}))
    assert time.perf_counter() - started < 0.5  # the loop was never held
    # the thread holds "start"; the queue took three more; seven were dropped
    assert counted(metrics, "stuck") == 7 and fwd.dropped == 7
    tracker.release.set()
    fwd.put(("finish", None))
    fwd.close(timeout=10)
    assert tracker.calls == ["start", "log 1", "log 2", "log 3"]  # "finish" met a full queue


def test_close_waits_a_bounded_time_and_counts_what_is_left() -> None:
    metrics, tracker = TrainerMetrics(), Stuck()
    fwd = Forwarder(tracker, size=100, on_drop=drop_counter(metrics))
    fwd.put(("start", {}))
    for step in range(1, 6):
        fwd.put(("log", "step", {"step": step}))
    started = time.perf_counter()
    fwd.close(timeout=0.5)
    assert time.perf_counter() - started < 3
    assert counted(metrics, "stuck") >= 5  # the five logs (and the stop mark) never ran
    tracker.release.set()


def test_an_unreachable_mlflow_drops_everything_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real MLflow client against a closed port: start fails, every later record is
    dropped without another try, and the count reaches Prometheus."""
    metrics = TrainerMetrics()
    tracker = MlflowTracker(MlflowSpec(tracking_uri=f"http://127.0.0.1:{free_port()}"), "job")
    fwd = Forwarder(tracker, size=100, on_drop=drop_counter(metrics))
    with caplog.at_level(logging.WARNING, logger="agpo_trainer.tracking"):
        fwd.put(("start", {"spec": {}, "versions": {}}))
        for step in range(1, 4):
            fwd.put(("log", "step", {"step": step, "rewardMean": 0.5}))
        fwd.put(("finish", None))
        fwd.close(timeout=60)
    assert counted(metrics, "mlflow") == 5  # start, three steps, finish
    lines = [r.getMessage() for r in caplog.records if r.name == "agpo_trainer.tracking"]
    assert lines[0].startswith("tracker mlflow: records dropped, start failed")
    assert lines[1] == "tracker mlflow: records dropped, it did not start"
    assert (
        lines[-1] == "tracker mlflow: 5 record(s) dropped in this run (agpo_tracker_dropped_total)"
    )
    assert len(lines) == 3
