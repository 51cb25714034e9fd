"""Small HTTP layer shared by the rollout client and the weight syncer.

Deadlines, not attempt counts, bound every call: a caller states how long it may wait in
total, and retries (only for transient failures: connection refused/reset or cut mid-answer,
502/503/504)
back off exponentially inside that budget. Errors are one line and name the URL.

Retries are tenacity's (`stop_before_delay` + `wait_exponential`), not urllib3's `Retry`:
urllib3 counts attempts and has no total-time budget, its final error is a nested
`MaxRetryError` to untangle, and it would retry inside the session, out of sight of the
per-attempt timeout that shrinks with the remaining deadline here.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

RETRY_STATUSES = frozenset({502, 503, 504})
#: What vLLM answers (HTTP 500) to the requests in flight when its engine is gone: a server
#: stopping (SIGTERM aborts them) or crashed. The server is going, not the request wrong.
#: The body carries vLLM's EngineDeadError message (vllm/v1/engine/exceptions.py), not its name.
ENGINE_DEAD = "EngineCore encountered an issue"


class HttpCallError(RuntimeError):
    """A call failed for good (after retries, or with a non-retryable answer)."""

    def __init__(
        self, message: str, *, url: str, status: int | None = None, transient: bool = False
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        # The server could not be reached or dropped the answer (refused, reset, 502-504):
        # the request may go to another server. A read timeout is not: the server took it.
        self.transient = transient


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff `base * 2**k`, capped at `max_delay_s`, inside a deadline."""

    base_delay_s: float = 0.25
    max_delay_s: float = 4.0
    retry: bool = True

    def stop(self, timeout_s: float) -> stop_base:
        # stop_before_delay, not stop_after_delay: never sleep past the deadline only to
        # make an attempt with no time left.
        return stop_before_delay(timeout_s) if self.retry else stop_after_attempt(1)

    def wait(self) -> wait_base:
        return wait_exponential(multiplier=self.base_delay_s, max=self.max_delay_s)


NO_RETRY = RetryPolicy(retry=False)

_local = threading.local()


def _session() -> requests.Session:
    # requests.Session is not documented as thread-safe; one per thread keeps pooling.
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        _local.session = session
    return session


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut at ``limit`` characters (errors name what a server said)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _connection_reason(exc: requests.ConnectionError) -> str:
    """'connection refused' and friends, out of requests' nested urllib3 message."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timed out"
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if match:
        return f"connection failed: {match.group(0)}"
    for marker in ("RemoteDisconnected", "Connection aborted", "Connection reset"):
        if marker in text:
            return f"connection failed: {marker}"
    return f"connection failed: {one_line(text, 160)}"


class _Transient(Exception):
    """A failure worth another attempt; `reason` ends the final error message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _attempt(
    method: str,
    url: str,
    *,
    token: str | None,
    json: Any,
    params: Mapping[str, Any] | None,
    deadline: float,
    connect_timeout_s: float,
    started: float,
    timeout_s: float,
) -> requests.Response:
    """One request with what is left of the deadline; raises `_Transient` to retry."""
    remaining = deadline - time.monotonic()
    try:
        response = _session().request(
            method,
            url,
            json=json,
            params=params,
            headers=auth_headers(token),
            timeout=(min(connect_timeout_s, max(remaining, 0.1)), max(remaining, 0.1)),
        )
    except requests.ConnectionError as exc:  # ConnectTimeout included: retried too
        raise _Transient(_connection_reason(exc)) from None
    except requests.exceptions.ChunkedEncodingError:
        # The body stopped short: the server died while answering (a vLLM server killed
        # mid-generate). As transient as a refused connection: a seeded request may be sent
        # again to the server that replaces it.
        raise _Transient("connection broken while reading the answer") from None
    except requests.Timeout:  # a read timeout: the server took the request, do not resend
        raise HttpCallError(
            f"{method} {url} timed out after {time.monotonic() - started:.1f}s "
            f"(limit {timeout_s:.0f}s)",
            url=url,
        ) from None
    except requests.RequestException as exc:  # a malformed URL and the like: never transient
        raise HttpCallError(f"{method} {url} failed: {one_line(str(exc), 160)}", url=url) from None
    if response.ok:
        return response
    reason = f"HTTP {response.status_code}: {one_line(response.text)}"
    if response.status_code in RETRY_STATUSES or (
        response.status_code == 500 and ENGINE_DEAD in response.text
    ):
        raise _Transient(reason)
    raise HttpCallError(f"{method} {url} failed: {reason}", url=url, status=response.status_code)


def call(
    method: str,
    url: str,
    *,
    token: str | None,
    timeout_s: float,
    json: Any = None,
    params: Mapping[str, Any] | None = None,
    policy: RetryPolicy = NO_RETRY,
    connect_timeout_s: float = 5.0,
) -> requests.Response:
    """One HTTP call with a total deadline; returns the 2xx response or raises."""
    started = time.monotonic()
    retrying = Retrying(
        retry=retry_if_exception_type(_Transient),
        stop=policy.stop(timeout_s),
        wait=policy.wait(),
    )
    try:
        return retrying(
            _attempt,
            method,
            url,
            token=token,
            json=json,
            params=params,
            deadline=started + timeout_s,
            connect_timeout_s=connect_timeout_s,
            started=started,
            timeout_s=timeout_s,
        )
    except RetryError as err:
        last = err.last_attempt
        reason = last.exception().reason  # type: ignore[union-attr]
        raise HttpCallError(
            f"{method} {url} failed after {last.attempt_number} attempt(s) in "
            f"{time.monotonic() - started:.1f}s (limit {timeout_s:.0f}s): {reason}",
            url=url,
            transient=True,
        ) from None
