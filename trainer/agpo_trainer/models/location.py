"""Where the trainer (and ``agpo run``) load the policy from, by the spec's model section."""

from __future__ import annotations

from pathlib import Path

from agpo_api.layout import MODELS_DIR
from agpo_api.models import ModelSpec
from agpo_trainer.models.tiny import resolve_model_path


def model_location(spec: ModelSpec, cache_dir: Path, models_mount: str = MODELS_DIR) -> str:
    """``source.pvc`` (mounted at ``models_mount``) + subPath, ``source.path``, a builtin
    model built into ``cache_dir``, or the hub id itself (transformers/vLLM download it)."""
    if spec.source is not None and spec.source.pvc is not None:
        return str(Path(models_mount) / (spec.source.sub_path or ""))
    if spec.source is not None and spec.source.path is not None:
        return spec.source.path
    return str(resolve_model_path(spec.name, cache_dir))
