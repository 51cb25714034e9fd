"""The plugin's own server route: a whole weight push in one HTTP round trip.

vLLM 0.32's RL API needs five calls per push (`/pause`, `/start_weight_update`,
`/update_weights`, `/finish_weight_update`, `/resume`) plus `/weight_info` to verify: six
HTTP round trips per server, each one more trip API server -> engine core -> workers. On a
tiny model those trips cost more than the bytes. This route runs the same engine-client
calls, in the same order, inside the API server process for one request:

    POST /agpo/push_weights
    {"update_info": {"buckets": [...]}, "weight_version": "7", "pause_mode": "wait"}
    -> 200 {"weight_version": "7", "phases": {"pause": s, "start": s, "update": s, ...}}

The trainer broadcasts the buckets while the request is in flight (`update_info` is the
wire format of `agpo_rollout.wire`, validated before the server is paused). On a failure
after the pause the server stays paused (its weights may be partly loaded, as with vLLM's
own calls) and the answer is a 500 naming the phase.

Mounted by `TokenAuthMiddleware` behind its token check (the one `--middleware` every
server already runs), and only where vLLM mounts its RL endpoints (`VLLM_SERVER_DEV_MODE=1`):
the route must never open a weight-update path that vLLM itself would keep closed. vLLM is
imported only when the route is called, so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from agpo_api.env import EnvVar

#: `agpo_rollout.wire.PUSH_PATH`, repeated so that matching a request needs no torch (the
#: wire module imports it); tests/rollout/test_weight_sync.py checks that they agree.
PUSH_PATH = "/agpo/push_weights"


def parse_push(body: bytes) -> tuple[dict[str, Any], str, str]:
    """`(update_info, weight_version, pause_mode)` of a raw push body (`wire` checks it);
    raises `wire.PushRequestError`."""
    from agpo_rollout import wire  # torch: imported where a push arrives, not at start

    try:
        data = json.loads(body or b"{}")
    except json.JSONDecodeError as exc:
        raise wire.PushRequestError(f"body is not JSON: {exc}") from None
    return wire.parse_push_request(data)


async def push_weights(
    engine: Any, update_info: dict[str, Any], version: str, pause_mode: str
) -> dict[str, Any]:
    """vLLM's RL round trip on `engine` (an `EngineClient`); the served version and the
    seconds of each phase. Raises `PhaseError` naming the phase that failed."""
    from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("pause", lambda: engine.pause_generation(mode=pause_mode, clear_cache=True)),
        ("start", engine.start_weight_update),
        (
            "update",
            lambda: engine.update_weights(
                request=WeightTransferUpdateRequest(update_info=update_info)
            ),
        ),
        ("finish", lambda: engine.finish_weight_update(version)),
        ("resume", engine.resume_generation),
    ]
    phases: dict[str, float] = {}
    for name, step in steps:
        start = time.perf_counter()
        try:
            await step()
        except Exception as exc:
            raise PhaseError(name, exc) from exc
        phases[name] = time.perf_counter() - start
    served = await engine.get_weight_version()
    return {"weight_version": served, "phases": phases}


class PhaseError(RuntimeError):
    def __init__(self, phase: str, cause: Exception) -> None:
        super().__init__(f"{phase} failed: {type(cause).__name__}: {cause}")
        self.phase = phase


class PushRoute:
    """ASGI wrapper: answers `POST /agpo/push_weights`, passes everything else on."""

    def __init__(self, app: ASGIApp, env: dict[str, str] | None = None) -> None:
        self.app = app
        env = dict(os.environ) if env is None else env
        self.enabled = env.get(EnvVar.VLLM_DEV_MODE.value, "") == "1"
        stall = env.get(EnvVar.STALL_PUSH_AFTER_VERSION.value, "")
        self.stall_after = int(stall) if stall.lstrip("-").isdigit() else None

    def matches(self, scope: Scope) -> bool:
        if not self.enabled or scope["type"] != "http" or scope.get("method") != "POST":
            return False
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        return bool(path == PUSH_PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.matches(scope):
            await self.app(scope, receive, send)
            return
        from agpo_rollout.wire import PushRequestError

        body = await _read_body(receive)
        try:
            info, version, mode = parse_push(body)
        except PushRequestError as exc:
            await _answer(send, 400, {"error": str(exc)})
            return
        if self.stall_after is not None and version.isdigit() and int(version) > self.stall_after:
            await asyncio.Event().wait()  # fault injection: never answers, never loads
        engine = scope["app"].state.engine_client  # Starlette sets scope["app"]
        try:
            result = await push_weights(engine, info, version, mode)
        except PhaseError as exc:
            await _answer(send, 500, {"error": str(exc), "phase": exc.phase})
            return
        await _answer(send, 200, result)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _answer(send: Send, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = ["PUSH_PATH", "PhaseError", "PushRoute", "parse_push", "push_weights"]
