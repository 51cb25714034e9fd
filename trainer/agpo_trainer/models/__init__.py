"""Model helpers: the builtin models (``builtin.py``: the tiny one built in code, packaged GGUF
files converted by ``gguf.py``), GGUF sources, the model cache, model-name resolution (no hub
downloads) and the response-log-prob wrapper the policy trains (``response.py``).

Names are resolved lazily so that `python -m agpo_trainer.models.tiny DIR` (the rollout
pod's init container; `.gguf` likewise) does not import the module twice.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "BUILTIN_TINY": "tiny",
    "TinyModelSpec": "tiny",
    "build_tiny_model": "tiny",
    "build_tokenizer": "tiny",
    "resolve_model_path": "builtin",
    "BUILDERS": "builtin",
    "convert_gguf": "gguf",
    "gguf_model_dir": "gguf",
    "ModelError": "errors",
    "model_location": "location",
    "ResponseModel": "response",
    "as_response_model": "response",
    "enable_gradient_checkpointing": "response",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"agpo_trainer.models.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
