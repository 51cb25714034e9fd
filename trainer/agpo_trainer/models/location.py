"""Where the trainer (and ``agpo run``) load the policy from, by the spec's model section, and
whether it can be loaded at all (checked before any server starts)."""

from __future__ import annotations

import os
from pathlib import Path

from agpo_api.layout import MODELS_DIR
from agpo_api.models import ModelSource, ModelSpec
from agpo_trainer.models.builtin import builtin_name, resolve_model_path
from agpo_trainer.models.errors import ModelError

__all__ = ["ModelError", "check_model", "load_tokenizer", "model_location"]

#: Seconds the Hugging Face Hub may take to say whether a model exists.
HUB_PROBE_TIMEOUT_S = 10.0


def gguf_source(source: ModelSource, models_mount: str = MODELS_DIR) -> Path:
    """The GGUF file ``source.gguf`` names: inside the claim (mounted at ``models_mount``) when
    ``source.pvc`` is set, else a path on this filesystem."""
    assert source.gguf is not None
    if source.pvc is not None:
        return Path(models_mount) / source.gguf.lstrip("/")
    return Path(source.gguf)


def model_location(spec: ModelSpec, cache_dir: Path, models_mount: str = MODELS_DIR) -> str:
    """``source.gguf`` or a builtin model, made once into ``cache_dir`` (a GGUF file converted,
    a model built); ``source.pvc`` (mounted at ``models_mount``) + subPath; ``source.path``; or
    the hub id itself (transformers/vLLM download it)."""
    source = spec.source
    if source is not None and source.gguf is not None:
        from agpo_trainer.models.gguf import gguf_model_dir

        return str(gguf_model_dir(gguf_source(source, models_mount), cache_dir))
    if source is not None and source.pvc is not None:
        return str(Path(models_mount) / (source.sub_path or ""))
    if source is not None and source.path is not None:
        return source.path
    return str(resolve_model_path(spec.name, cache_dir))


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a directory."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def check_model(spec: ModelSpec, location: str) -> None:
    """Raise :class:`ModelError` unless ``location`` (from :func:`model_location`) is a model
    directory, or a hub id that is cached or fetchable from here."""
    source = spec.source
    if source is not None and source.gguf is not None:
        return  # converted by model_location, which checked the file
    from_source = source is not None and (source.path is not None or source.pvc is not None)
    if builtin_name(spec.name) is not None and not from_source:
        return  # built on the spot
    path = Path(location).expanduser()
    field = "spec.model.name"
    if source is not None and source.pvc is not None:
        field = f"spec.model.source.subPath (in claim {source.pvc})"
    elif source is not None and source.path is not None:
        field = "spec.model.source.path"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{field}: {path} has no config.json (not a Hugging Face model dir)")
        return
    if from_source or _looks_like_path(location) or path.exists():
        raise ModelError(f"{field}: model directory {path} does not exist")
    _check_hub_model(location, spec.revision)


def _check_hub_model(repo: str, revision: str | None) -> None:
    """A hub id: fine when its config is cached; else ask the hub, briefly."""
    import huggingface_hub as hub

    cached = hub.try_to_load_from_cache(repo, "config.json", revision=revision)
    if isinstance(cached, str):
        return
    hint = "download it first (hf download) and set spec.model.source.path, or check the name"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelError(
            f"spec.model.name: {repo!r} is not in the local Hugging Face cache and "
            f"HF_HUB_OFFLINE is set, so it cannot be fetched; {hint}"
        )
    try:
        hub.model_info(repo, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
    except (hub.errors.RepositoryNotFoundError, hub.errors.RevisionNotFoundError):
        raise ModelError(
            f"spec.model.name: {repo!r} (revision {revision or 'main'}) does not exist on the "
            f"Hugging Face Hub, or needs a token (spec.model.hfTokenSecretRef / HF_TOKEN)"
        ) from None
    except hub.errors.GatedRepoError:
        raise ModelError(
            f"spec.model.name: {repo!r} is gated: accept its license on the Hub and pass a "
            "token (spec.model.hfTokenSecretRef / HF_TOKEN)"
        ) from None
    except Exception as err:  # no network, DNS, proxy, TLS: all mean "cannot fetch from here"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(
            f"spec.model.name: {repo!r} cannot be fetched from the Hugging Face Hub from this "
            f"machine ({type(err).__name__}: {first}); {hint}"
        ) from None


def load_tokenizer(spec: ModelSpec, location: str) -> object:
    """The tokenizer the trainer encodes prompts with (``spec.model.tokenizer`` or the model's);
    :class:`ModelError` naming the field when it cannot be loaded."""
    from transformers import AutoTokenizer

    name = spec.tokenizer or location
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        field = "spec.model.tokenizer" if spec.tokenizer else "the model's tokenizer"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"{field}: cannot load a tokenizer from {name!r}: {first}") from None
