"""Builtin models (``model.name: builtin:...``): each name of ``agpo_api.catalog.MODELS`` and
the function that makes its directory in the model cache. The contract says which names exist
and what provides them (code, or a GGUF file in a package); this table says how."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agpo_api.catalog import MODELS
from agpo_trainer.models.errors import ModelError

BUILTIN_PREFIX = "builtin:"

#: (the spec's name, the model cache) -> the model's directory, made once.
Builder = Callable[[str, Path], Path]


def _tiny(name: str, cache_dir: Path) -> Path:
    from agpo_trainer.models.tiny import resolve_model_path

    return resolve_model_path(name, cache_dir)


def _packaged(name: str, cache_dir: Path) -> Path:
    from agpo_trainer.models.gguf import packaged_model_dir

    return packaged_model_dir(name, cache_dir)


# Imports inside the builders: naming a model must not import torch or transformers. The
# models built by code of their own; every packaged one (catalog.MODELS traits) is converted.
BUILT_IN_CODE: dict[str, Builder] = {"builtin:tiny": _tiny}
BUILDERS: dict[str, Builder] = {
    **BUILT_IN_CODE,
    **{name: _packaged for name in MODELS.having(lambda t: t.packaged)},
}


def builtin_name(name: str) -> str | None:
    """The catalog's name for a builtin model (``builtin:tiny@3`` -> ``builtin:tiny``: the
    trainer also takes a seed); None for a hub id or a directory."""
    if not name.startswith(BUILTIN_PREFIX):
        return None
    return name.partition("@")[0]


def resolve_model_path(name: str, cache_dir: Path) -> Path:
    """A builtin model's directory in ``cache_dir`` (made on first use); any other name is
    returned as a path unchanged."""
    base = builtin_name(name)
    if base is None:
        return Path(name)
    builder = BUILDERS.get(base)
    if builder is None:
        raise ModelError(
            f"spec.model.name: unknown builtin model {name!r}; valid: {', '.join(MODELS.names())}"
        )
    return builder(name, Path(cache_dir))
