"""What the orchestrator (`WeightSyncer`) needs from a weight transport, and the pieces
every transport shares: the server record, authenticated HTTP calls with one error type,
and the "HTTP call on a thread while this thread joins the collective" step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from agpo_trainer.rollout.http import HttpCallError, RetryPolicy, call

T = TypeVar("T")
#: What `WeightSyncer.push` accepts: a module (its `named_parameters()`) or a full state dict.
Weights = torch.nn.Module | Mapping[str, torch.Tensor]


class WeightSyncError(RuntimeError):
    """A weight sync step failed; the message names the server and the step."""


@dataclass
class Server:
    """One vLLM server as the syncer knows it."""

    url: str
    index: int  # position in the syncer's list: names its group (gloo) or port (nccl)
    workers: int = 1  # GET /get_world_size; the group has 1 + workers ranks


@dataclass(frozen=True)
class ServerCalls:
    """Authenticated, time-limited HTTP calls to the servers, failing as `WeightSyncError`
    whose message starts with `prefix` (e.g. "weight sync (gloo)")."""

    token: str | None
    timeout_s: float
    prefix: str

    def __call__(
        self,
        server: Server,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        retry: bool = False,
    ) -> Any:
        """The decoded JSON answer (None when the body is empty)."""
        try:
            response = call(
                method,
                f"{server.url}{path}",
                token=self.token,
                timeout_s=timeout_s or self.timeout_s,
                json=json,
                params=params,
                policy=RetryPolicy() if retry else RetryPolicy(retry=False),
            )
        except HttpCallError as exc:
            raise WeightSyncError(f"{self.prefix}: {exc}") from None
        return response.json() if response.content else None


@dataclass(frozen=True)
class PushAnswer:
    """What one server says after a push: the version it now serves, and the seconds of
    each phase as it measured them (pause, start, update, finish, resume)."""

    version: str
    phases: dict[str, float]


class Payload(Protocol):
    """Weights prepared once per push for every server (`Transport.prepare`)."""

    @property
    def nbytes(self) -> int: ...


class Transport(Protocol):
    """Moves weights into servers; `WeightSyncer` does the rest (discover, pack once, all
    servers at once, verify). Per-server state (groups, engines) lives in the transport."""

    #: May `init`/`send` run for all servers at once (threads), or one server at a time?
    parallel: bool

    def listen(self) -> int:
        """Get the rendezvous ready before a round of `init` calls; returns the port the
        servers dial (a requested port 0 becomes the bound one)."""
        ...

    def init(self, server: Server, group_name: str) -> None:
        """Join `server`'s workers in a fresh group (`group_name` is unique per init)."""
        ...

    def prepare(self, weights: Weights) -> Payload:
        """What `send` ships, built once per push (the gloo buckets are packed here)."""
        ...

    def push(self, server: Server, payload: Payload, version: str, pause_mode: str) -> PushAnswer:
        """pause -> start -> update (+ collective) -> finish(version) -> resume on one
        server, in as few HTTP round trips as its API allows; the served version after."""
        ...

    def drop(self, server: Server) -> None:
        """Forget `server`'s group (it left the pool, or missed a push and joins again)."""
        ...

    def close(self) -> None:
        """Drop every group; the next push needs `init` again."""
        ...


def during_http(
    http: Callable[[], object],
    collective: Callable[[], T],
    *,
    timeout_s: float,
    failure: Callable[[Exception], Exception],
    grace_s: float = 1.0,
) -> T:
    """Run `http` and `collective` at once (each on a worker thread); return the
    collective's result once both succeeded.

    The server answers `/init_weight_transfer_engine` and `/agpo/push_weights` only once
    its workers took part in the collective, which needs this process in it too. Whichever
    fails first ends the wait: a server that refuses the call (or is gone) gives its error
    at once, not after the collective's timeout. If the collective fails, the HTTP error
    is usually the clearer cause (the server said why), so it wins when it arrives within
    `grace_s`; else `failure(exc)` is raised.
    """
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="wsync-http")
    deadline = time.monotonic() + timeout_s
    try:
        http_f = pool.submit(http)
        coll_f = pool.submit(collective)
        wait([http_f, coll_f], timeout=timeout_s, return_when=FIRST_EXCEPTION)
        if http_f.done() and http_f.exception() is not None:
            raise http_f.exception()  # type: ignore[misc]
        if coll_f.done() and coll_f.exception() is not None:
            exc = coll_f.exception()
            wait([http_f], timeout=grace_s)
            error = http_f.exception() if http_f.done() else None
            if error is not None:
                raise error from exc
            raise failure(exc) from None  # type: ignore[arg-type]
        try:
            result = coll_f.result(timeout=max(0.0, deadline - time.monotonic()))
            http_f.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise failure(TimeoutError(f"no answer within {timeout_s:.0f}s")) from None
        return result
    finally:
        # Never join a thread whose peer may be dead; its own timeout ends it.
        pool.shutdown(wait=False)


__all__ = [
    "Payload",
    "PushAnswer",
    "Server",
    "ServerCalls",
    "Transport",
    "WeightSyncError",
    "Weights",
    "during_http",
]
