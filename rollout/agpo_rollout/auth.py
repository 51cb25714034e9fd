"""Bearer-token check on every path of a vLLM server (ASGI middleware).

Why not vLLM's `--api-key`: in vLLM 0.32 it guards only paths under `/v1`, `/v2`,
`/inference` and `/cohere`; the dev-mode RL endpoints (`/update_weights`,
`/collective_rpc`, `/pause`, ...) stay open to anyone who can reach the port, and they can
replace the served weights or run methods on the workers. This middleware closes all
paths except `/health` (kubelet probes carry no token) and, when
`AGPO_AUTH_ALLOW_METRICS=1`, `/metrics` (for a Prometheus scrape without a secret).

Load it with `--middleware agpo_rollout.auth.TokenAuthMiddleware`. Behind the check it
also mounts the plugin's one-round-trip weight push (`agpo_rollout.routes`, only with
`VLLM_SERVER_DEV_MODE=1`), so the one flag every server already has brings both.

Configuration (environment of the vLLM process):
- `AGPO_ROLLOUT_TOKEN`: the shared secret; requests need `Authorization: Bearer <token>`.
- `AGPO_ROLLOUT_AUTH=disabled`: explicit opt-out; the middleware then passes everything.
- Neither set: the middleware refuses to start (fail closed). An unset secret in a pod spec
  is a deployment mistake, and an open weight-update endpoint is worse than a server that
  does not come up.
The token is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from agpo_api.env import AUTH_DISABLED as DISABLED
from agpo_api.env import EnvVar
from agpo_rollout.routes import PushRoute

logger = logging.getLogger(__name__)

# The names live in the contract: the operator writes them into rollout pods.
TOKEN_ENV = EnvVar.ROLLOUT_TOKEN.value
MODE_ENV = EnvVar.ROLLOUT_AUTH.value
ALLOW_METRICS_ENV = EnvVar.AUTH_ALLOW_METRICS.value

ALWAYS_OPEN_PATHS = frozenset({"/health"})
METRICS_PATH = "/metrics"


class AuthConfigError(RuntimeError):
    """The environment neither provides a token nor explicitly disables auth."""


@dataclass(frozen=True)
class AuthConfig:
    token_digest: bytes | None  # None: auth disabled on purpose
    open_paths: frozenset[str]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AuthConfig:
        env = os.environ if env is None else env
        token = env.get(TOKEN_ENV, "")
        mode = env.get(MODE_ENV, "").strip().lower()
        open_paths = set(ALWAYS_OPEN_PATHS)
        if env.get(ALLOW_METRICS_ENV, "").strip().lower() in ("1", "true", "yes"):
            open_paths.add(METRICS_PATH)
        if mode == DISABLED:
            return cls(token_digest=None, open_paths=frozenset(open_paths))
        if mode not in ("", "token"):
            raise AuthConfigError(f"{MODE_ENV} must be 'token' or '{DISABLED}', got {mode!r}")
        if not token:
            raise AuthConfigError(
                f"{TOKEN_ENV} is empty: set it to the rollout token, or set "
                f"{MODE_ENV}={DISABLED} to run without authentication (unsafe: the weight "
                "update endpoints would be open to anyone who can reach the port)"
            )
        return cls(token_digest=_digest(token), open_paths=frozenset(open_paths))


def _digest(value: str) -> bytes:
    # Comparing fixed-size digests keeps the comparison time independent of the length of
    # the presented token as well as of its content.
    return hashlib.sha256(value.encode("utf-8")).digest()


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of the first `Authorization: Bearer ...` header, if any."""
    for key, value in headers:
        if key.lower() == b"authorization":
            scheme, _, param = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and param.strip():
                return param.strip()
            return None
    return None


class TokenAuthMiddleware:
    """Pure ASGI middleware; vLLM instantiates it with the app as the only argument."""

    def __init__(self, app: ASGIApp, config: AuthConfig | None = None) -> None:
        self.app = PushRoute(app)  # after the token check, like every other path
        self.config = AuthConfig.from_env() if config is None else config
        if self.config.token_digest is None:
            logger.warning("token auth DISABLED (%s=%s): every path is open", MODE_ENV, DISABLED)
        else:
            logger.info(
                "token auth enabled on every path except %s", sorted(self.config.open_paths)
            )

    def is_authorized(self, scope: Scope) -> bool:
        if self.config.token_digest is None:
            return True
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        if path in self.config.open_paths:
            return True
        token = bearer_token(scope.get("headers", []))
        if token is None:
            return False
        return hmac.compare_digest(_digest(token), self.config.token_digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.is_authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # Closing before accept makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": "Unauthorized", "code": 401}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="agpo-rollout"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


__all__ = [
    "ALLOW_METRICS_ENV",
    "MODE_ENV",
    "TOKEN_ENV",
    "AuthConfig",
    "AuthConfigError",
    "TokenAuthMiddleware",
]
