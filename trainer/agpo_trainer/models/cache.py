"""The model cache (``AGPO_CACHE_DIR``, default ``~/.cache/agpo``): model directories made
once (a builtin model built, a GGUF file converted) and reused by every later run, rank and
server. A directory there is complete or absent, never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def is_model_dir(path: Path) -> bool:
    """Whether ``path`` holds a Hugging Face model (its ``config.json``)."""
    return (path / "config.json").is_file()


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """``target``, made by ``build(tmp)`` unless it already holds a model.

    The build goes into a temporary sibling that is renamed into place, so concurrent callers
    (several ranks, several pods on a shared volume, a killed init container) never see a
    half-written model. Builds are deterministic: the loser of a race drops its copy.
    """
    target = Path(target)
    if is_model_dir(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_model_dir(target):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
