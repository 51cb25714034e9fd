"""vLLM plugin of the AGPO project: CPU-capable weight-transfer backends.

vLLM calls `register()` in every process it starts (API server, engine core, workers)
through the `vllm.general_plugins` entry point declared in pyproject.toml:

    [project.entry-points."vllm.general_plugins"]
    agpo = "agpo_rollout:register"

so a server started with `--weight-transfer-config '{"backend": "gloo"}'` finds the
backend wherever the engine is built. Importing this package is cheap (no torch, no vLLM);
the engines are registered by module path and imported only when selected.

Modules: `wire` (bucket format and update_info schema) and `gloo` (process groups), both
torch only and shared with the trainer side; `engine` (the vLLM worker engine); `auth` (the
token middleware). Only the worker side is registered: the trainer drives servers with
`agpo_trainer.rollout.weight_sync.WeightSyncer`, not through vLLM's trainer factory.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)

# name -> (module, worker-side engine class). A new backend (e.g. a shared-volume `file`
# backend) is one more entry here.
BACKENDS: dict[str, tuple[str, str]] = {
    "gloo": ("agpo_rollout.engine", "GlooWeightTransferEngine"),
}

_lock = threading.Lock()
_registered = False


def register() -> None:
    """Register our backends on vLLM's worker-side engine factory. Idempotent.

    vLLM warns that general plugins may run several times per process, and the
    factory raises on a duplicate name, so we guard twice: a process-wide flag, and a
    check of the registry in case another copy of this module (or a user) registered
    the name already.
    """
    global _registered
    with _lock:
        if _registered:
            return
        from vllm.distributed.weight_transfer import factory

        for name, (module, worker_cls) in BACKENDS.items():
            _register_one(factory.WeightTransferEngineFactory, name, module, worker_cls)
        _registered = True


def _register_one(registry: type, name: str, module: str, cls_name: str) -> None:
    if name in getattr(registry, "_registry", {}):
        logger.debug("weight transfer backend %r already on %s", name, registry.__name__)
        return
    try:
        registry.register_engine(name, module, cls_name)  # type: ignore[attr-defined]
    except ValueError:  # registered concurrently by someone else: same outcome
        logger.debug("weight transfer backend %r already on %s", name, registry.__name__)


__all__ = ["BACKENDS", "register"]
