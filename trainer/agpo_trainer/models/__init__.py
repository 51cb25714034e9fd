"""Model helpers: the builtin tiny model and model-name resolution (no hub downloads).

Names are resolved lazily so that `python -m agpo_trainer.models.tiny DIR` (the rollout
pod's init container) does not import the module twice.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agpo_trainer.models.tiny import (
        BUILTIN_TINY,
        TinyModelSpec,
        build_tiny_model,
        build_tokenizer,
        resolve_model_path,
    )

__all__ = [
    "BUILTIN_TINY",
    "TinyModelSpec",
    "build_tiny_model",
    "build_tokenizer",
    "resolve_model_path",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("agpo_trainer.models.tiny"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
