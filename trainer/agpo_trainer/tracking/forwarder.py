"""One tracker behind a bounded queue and a background thread, so that a tracker that is down
or slow never fails or slows the training loop (what TRL learned about blocking reporters).

The loop only ever calls :meth:`Forwarder.put`, which never blocks: a full queue drops the
record. The thread hands records to the tracker in order; a call that raises drops that
record, warns (once per kind of error, naming the tracker) and goes on with the next, and a
tracker that cannot start drops everything after. Every dropped record is counted through
``on_drop`` (the ``agpo_tracker_dropped_total{tracker}`` counter). :meth:`Forwarder.close`
waits a bounded time for the queue to drain, then gives up on the rest (counted too).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agpo_api.records import Kind

log = logging.getLogger("agpo_trainer.tracking")


class Tracker(Protocol):
    """An experiment tracker: what :class:`Forwarder` calls, on its own thread, in order."""

    name: str

    def start(self, header: dict[str, Any]) -> None:
        """Open the run; ``header`` is the records file's ``run`` record (job, spec, versions)."""

    def log(self, kind: Kind, record: dict[str, Any]) -> None:
        """One ``step`` or ``eval`` record (:mod:`agpo_api.records`)."""

    def finish(self, checkpoint: Path | None) -> None:
        """The run is over; ``checkpoint`` is the final one (None: none)."""


_STOP = object()


class Forwarder:
    """Feeds one :class:`Tracker` from a queue of at most ``size`` records."""

    def __init__(self, tracker: Tracker, size: int, on_drop: Callable[[str, int], None]) -> None:
        self.tracker, self.on_drop = tracker, on_drop
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=size)
        self._started = False
        self._warned: set[str] = set()
        self._thread = threading.Thread(
            target=self._work, name=f"tracker-{tracker.name}", daemon=True
        )
        self._thread.start()

    def put(self, item: tuple[Any, ...]) -> None:
        """Queue ``(call, *args)``; never blocks: a full queue drops it."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._drop(1, "its queue is full (the tracker is slower than the run)")

    def close(self, timeout: float) -> None:
        """Let the queue drain for at most ``timeout`` seconds; what is left is dropped."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            left = self._queue.qsize()
            self._drop(left, f"it did not finish within {timeout:.0f} s")
        if self.dropped:
            log.warning(
                "tracker %s: %d record(s) dropped in this run (agpo_tracker_dropped_total)",
                self.tracker.name, self.dropped,
            )  # fmt: skip

    # ------------------------------------------------------------------ the thread
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            call, *args = item
            if call != "start" and not self._started:
                self._drop(1, "it did not start")
                continue
            try:
                getattr(self.tracker, call)(*args)
                self._started = self._started or call == "start"
            except Exception as e:  # a tracker's failure must never reach the loop
                self._drop(1, f"{call} failed: {type(e).__name__}: {_first_line(e)}")

    def _drop(self, n: int, why: str) -> None:
        if n <= 0:
            return
        self.dropped += n
        self.on_drop(self.tracker.name, n)
        key = why.split(":", 1)[0]
        if key not in self._warned:  # once per kind of failure, not once per record
            self._warned.add(key)
            log.warning("tracker %s: records dropped, %s", self.tracker.name, why)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""
