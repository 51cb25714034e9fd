"""Small HTTP layer shared by the rollout client and the weight syncer.

Deadlines, not attempt counts, bound every call: a caller states how long it may wait in
total, and retries (only for transient failures: connection refused/reset, 502/503/504)
back off exponentially inside that budget. Errors are one line and name the URL.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

RETRY_STATUSES = frozenset({502, 503, 504})


class HttpCallError(RuntimeError):
    """A call failed for good (after retries, or with a non-retryable answer)."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff `base * 2**k`, capped at `max_delay_s`, inside a deadline."""

    base_delay_s: float = 0.25
    max_delay_s: float = 4.0
    retry: bool = True

    def delay(self, attempt: int) -> float:
        return float(min(self.max_delay_s, self.base_delay_s * (2**attempt)))


NO_RETRY = RetryPolicy(retry=False)

_local = threading.local()


def _session() -> requests.Session:
    # requests.Session is not documented as thread-safe; one per thread keeps pooling.
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        _local.session = session
    return session


def _short(text: str, limit: int = 300) -> str:
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
    return f"connection failed: {_short(text, 160)}"


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
    deadline = time.monotonic() + timeout_s
    attempt = 0
    start = time.monotonic()
    while True:
        remaining = deadline - time.monotonic()
        reason: str
        try:
            response = _session().request(
                method,
                url,
                json=json,
                params=params,
                headers=auth_headers(token),
                timeout=(min(connect_timeout_s, max(remaining, 0.1)), max(remaining, 0.1)),
            )
        except requests.ConnectionError as exc:
            reason = _connection_reason(exc)
        except requests.Timeout:
            raise HttpCallError(
                f"{method} {url} timed out after {time.monotonic() - start:.1f}s "
                f"(limit {timeout_s:.0f}s)",
                url=url,
            ) from None
        else:
            if response.ok:
                return response
            reason = f"HTTP {response.status_code}: {_short(response.text)}"
            if response.status_code not in RETRY_STATUSES:
                raise HttpCallError(
                    f"{method} {url} failed: {reason}", url=url, status=response.status_code
                )
        attempt += 1
        delay = policy.delay(attempt - 1)
        if not policy.retry or time.monotonic() + delay >= deadline:
            raise HttpCallError(
                f"{method} {url} failed after {attempt} attempt(s) in "
                f"{time.monotonic() - start:.1f}s (limit {timeout_s:.0f}s): {reason}",
                url=url,
            )
        time.sleep(delay)
