"""The HTTP layer's retries inside a deadline, against a scripted local server.

No torch at import time (see conftest.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agpo_trainer.rollout.http import HttpCallError, RetryPolicy, call

#: A scripted "status" that sends 200 with its headers, part of the body, then drops the
#: connection: a server killed while it answered.
CUT = 0
#: A scripted "status": vLLM's HTTP 500 for a request in flight when its engine went away.
ENGINE_DEAD = 1500


class Scripted(ThreadingHTTPServer):
    """Answers with the next status of `statuses` (the last one repeats)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.statuses: list[int] = [200]
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization header)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Scripted

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        statuses = self.server.statuses
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        body = b'{"ok": true}' if status == 200 else b"busy\n  try later"
        if status == ENGINE_DEAD:
            # vLLM 0.32's answer, verbatim (seen in the elastic pool's e2e test)
            status, body = (
                500,
                (
                    b'{"error":{"message":"EngineCore encountered an issue. See stack trace (above) '
                    b'for the root cause.","type":"InternalServerError","param":null,"code":500}}'
                ),
            )
        if status == CUT:
            self.send_response(200)
            self.send_header("Content-Length", "1589")
            self.end_headers()
            self.wfile.write(b'{"ok"')
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


@pytest.fixture
def server() -> Iterator[Scripted]:
    httpd = Scripted()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


FAST = RetryPolicy(base_delay_s=0.05, max_delay_s=0.2)


def test_transient_statuses_are_retried_until_success(server: Scripted) -> None:
    server.statuses = [503, 502, 504, 200]
    response = call("GET", f"{server.url}/x", token="t", timeout_s=10, policy=FAST)
    assert response.json() == {"ok": True}
    assert server.seen == [("/x", "Bearer t")] * 4


def test_a_connection_cut_mid_answer_is_retried(server: Scripted) -> None:
    """A server killed while it streamed its answer (requests' ChunkedEncodingError: the
    chaos test caught one) is transient like a refused connection; without retries it is
    one line."""
    server.statuses = [CUT, 200]
    response = call("GET", f"{server.url}/x", token=None, timeout_s=10, policy=FAST)
    assert response.json() == {"ok": True} and len(server.seen) == 2
    server.statuses = [CUT]
    with pytest.raises(HttpCallError, match="connection broken while reading the answer"):
        call("GET", f"{server.url}/x", token=None, timeout_s=10)


def test_a_stopping_vllm_servers_engine_dead_answer_is_transient(server: Scripted) -> None:
    """SIGTERM makes vLLM abort the requests in flight with its EngineDeadError 500: the
    server is going (a scale-down), so the request may go to another one; a plain 500 is
    the request's own failure and final."""
    server.statuses = [ENGINE_DEAD, 200]
    response = call("GET", f"{server.url}/x", token=None, timeout_s=10, policy=FAST)
    assert response.json() == {"ok": True} and len(server.seen) == 2
    server.statuses = [ENGINE_DEAD]
    with pytest.raises(HttpCallError) as info:
        call("GET", f"{server.url}/x", token=None, timeout_s=10)
    assert info.value.transient and "HTTP 500" in str(info.value)
    server.statuses = [500]
    with pytest.raises(HttpCallError) as info:
        call("GET", f"{server.url}/x", token=None, timeout_s=10, policy=FAST)
    assert not info.value.transient and info.value.status == 500


def test_other_errors_fail_at_once_with_the_status(server: Scripted) -> None:
    server.statuses = [400, 200]
    with pytest.raises(HttpCallError) as info:
        call("GET", f"{server.url}/x", token=None, timeout_s=10, policy=FAST)
    assert info.value.status == 400 and info.value.url == f"{server.url}/x"
    assert str(info.value) == f"GET {server.url}/x failed: HTTP 400: busy try later"
    assert server.seen == [("/x", None)]


def test_retries_stop_before_the_deadline_with_a_one_line_error(server: Scripted) -> None:
    server.statuses = [503]
    start = time.monotonic()
    with pytest.raises(HttpCallError) as info:
        call("GET", f"{server.url}/x", token=None, timeout_s=1.0, policy=FAST)
    assert time.monotonic() - start < 1.0  # never sleeps past the deadline
    message = str(info.value)
    assert message.startswith(f"GET {server.url}/x failed after {len(server.seen)} attempt(s)")
    assert message.endswith("(limit 1s): HTTP 503: busy try later")
    assert len(server.seen) >= 4  # 0.05 + 0.1 + 0.2 + 0.2 ... within 1 s


def test_without_retry_a_transient_failure_is_final(server: Scripted) -> None:
    server.statuses = [503, 200]
    with pytest.raises(HttpCallError, match=r"failed after 1 attempt\(s\)"):
        call("GET", f"{server.url}/x", token=None, timeout_s=10)
    assert len(server.seen) == 1


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    from tenacity import RetryCallState

    wait = RetryPolicy(base_delay_s=0.25, max_delay_s=4.0).wait()
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    delays = []
    for attempt in range(1, 8):
        state.attempt_number = attempt
        delays.append(wait(state))
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
