"""``agpo-operator`` (and ``python -m agpo_operator``): run the operator, configured from env.

Equivalent to ``kopf run -m agpo_operator`` with the namespaces, liveness endpoint and peering
taken from ``AGPO_*`` variables (see :mod:`agpo_operator.config` and docs/operator.md).
"""

from __future__ import annotations

import sys
from typing import Any

from agpo_operator.config import Config, ConfigError


def kopf_run_kwargs(config: Config) -> dict[str, Any]:
    """The keyword arguments of ``kopf.run`` for a configuration."""
    kwargs: dict[str, Any] = {
        "clusterwide": config.clusterwide,
        "namespaces": list(config.namespaces),
        "standalone": not config.peering,
    }
    if config.peering:
        kwargs["peering_name"] = config.peering
        kwargs["priority"] = config.peering_priority
    if config.health_port:
        kwargs["liveness_endpoint"] = f"http://0.0.0.0:{config.health_port}/healthz"
    return kwargs


def main() -> int:
    try:
        config = Config.from_env()
    except ConfigError as err:
        print(f"agpo-operator: {err}", file=sys.stderr)
        return 2
    import kopf

    from agpo_operator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=False)
    kopf.run(**kopf_run_kwargs(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
