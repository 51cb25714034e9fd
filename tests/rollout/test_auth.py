"""The token middleware: inside vLLM's app wiring, and as plain ASGI.

No torch at import time (see conftest.py); the vLLM part skips where vLLM is missing.
"""

from __future__ import annotations

import asyncio
import os
from argparse import Namespace
from typing import Any

import pytest

from agpo_api.vllm_server import AUTH_MIDDLEWARE
from agpo_rollout.auth import AuthConfig, AuthConfigError, TokenAuthMiddleware


def _asgi_status(middleware: TokenAuthMiddleware, path: str, headers: list[Any]) -> int:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(middleware(scope, receive, send))
    return int(sent[0]["status"])


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_auth_middleware_refuses_to_start_without_token_inside_vllm_app() -> None:
    """The real vLLM wiring (`--middleware`, with the contract's ``AUTH_MIDDLEWARE``: the
    path every server command passes) instantiates our class; with no token and no explicit
    opt-out that raises, so the server does not start."""
    pytest.importorskip("vllm", reason="needs vllm")
    from fastapi import FastAPI
    from vllm.entrypoints.serve.middleware.register import init_entrypoints_middleware

    args = Namespace(
        allowed_origins=["*"],
        allow_credentials=False,
        allowed_methods=["*"],
        allowed_headers=["*"],
        api_key=None,
        enable_request_id_headers=False,
        middleware=[AUTH_MIDDLEWARE],
    )
    saved = {k: os.environ.pop(k, None) for k in ("AGPO_ROLLOUT_TOKEN", "AGPO_ROLLOUT_AUTH")}
    try:
        app = FastAPI()
        init_entrypoints_middleware(args, app, ())
        with pytest.raises(AuthConfigError, match="AGPO_ROLLOUT_TOKEN"):
            app.build_middleware_stack()
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def test_auth_middleware_opens_only_health_and_optionally_metrics() -> None:
    opened = TokenAuthMiddleware(_ok, AuthConfig.from_env({"AGPO_ROLLOUT_AUTH": "disabled"}))
    assert _asgi_status(opened, "/update_weights", []) == 200
    env = {"AGPO_ROLLOUT_TOKEN": "s3cret", "AGPO_AUTH_ALLOW_METRICS": "1"}
    guarded = TokenAuthMiddleware(_ok, AuthConfig.from_env(env))
    assert _asgi_status(guarded, "/metrics", []) == 200
    assert _asgi_status(guarded, "/health/../update_weights", []) == 401
    assert _asgi_status(guarded, "/pause", [(b"authorization", b"Bearer s3cre")]) == 401
    assert _asgi_status(guarded, "/pause", [(b"authorization", b"bearer s3cret")]) == 200
    with pytest.raises(AuthConfigError, match="must be 'token' or 'disabled'"):
        AuthConfig.from_env({"AGPO_ROLLOUT_AUTH": "off"})
