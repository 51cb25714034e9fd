"""GGUF model sources: a GGUF file (``model.source.gguf``) or one shipped inside a Python
package (``builtin:smollm2-135m-instruct``), converted once into the model cache as a plain
Hugging Face safetensors directory. The trainer, the vLLM servers and the checkpoints all load
that directory; nothing after the conversion knows the weights came from a GGUF file.

Why convert instead of loading the GGUF file each time: transformers dequantizes it on every
load (~20 s for 135M parameters) and every other part already loads a safetensors directory.
``save_pretrained`` refuses a GGUF-loaded model ("quantized with gguf, not serializable"), so
the dequantized float32 weights go into a fresh model built from the same config without its
``quantization_config`` (the logits are identical).

A user's mistake is one :class:`ModelError` line naming the field and the fix: the extra not
installed, a file that is missing or not GGUF, an architecture transformers cannot dequantize.

In a pod (the rollout pod's init container; the trainer converts into its own cache)::

    python -m agpo_trainer.models.gguf /model/hf --builtin builtin:smollm2-135m-instruct
    python -m agpo_trainer.models.gguf /model/hf --file /models/my-model.Q8_0.gguf
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from agpo_api.catalog import MODELS
from agpo_trainer.models.cache import build_once, is_model_dir
from agpo_trainer.models.errors import ModelError

#: Part of every cache key: a changed conversion writes new directories instead of reusing
#: those an older one wrote.
CONVERSION = 1
#: What loading a GGUF file needs besides transformers: the ``gguf`` extra.
GGUF_EXTRA = "gguf"
GGUF_MODULES = ("gguf", "accelerate")
GGUF_MAGIC = b"GGUF"
NAME_FIELD = "spec.model.name"
SOURCE_FIELD = "spec.model.source.gguf"
#: Where the conversion records what it converted (the source file, the versions).
PROVENANCE = "agpo_gguf_source.json"


#: The packaged builtin models (``agpo_api.catalog.MODELS``: each names its package's module
#: and the GGUF file in it).
PACKAGED = MODELS.having(lambda t: t.packaged)


def missing_modules(names: Sequence[str]) -> list[str]:
    """The modules of ``names`` that cannot be imported here (found without importing them)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def packaged_file(name: str) -> Path:
    """The GGUF file of the packaged builtin model ``name``; a :class:`ModelError` naming the
    extra to install when it (or its package) is missing."""
    packaged = MODELS.traits(name)
    install, extra = packaged.install(), packaged.extra
    if packaged.module is None or packaged.filename is None:
        raise ModelError(f"{NAME_FIELD}: {name} is not a packaged GGUF model")
    missing = missing_modules([*GGUF_MODULES, packaged.module])
    if missing:
        raise ModelError(f"{NAME_FIELD}: {name} needs the {extra} extra: {install}")
    spec = importlib.util.find_spec(packaged.module)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0]) / packaged.filename if folders else Path(packaged.filename)
    if not path.is_file():
        raise ModelError(
            f"{NAME_FIELD}: {name}: the installed package has no {packaged.filename}; "
            f"reinstall it: {install}"
        )
    return path


def check_gguf_file(path: Path, field: str = SOURCE_FIELD) -> None:
    """One line naming ``field`` unless ``path`` is a GGUF file."""
    if not path.is_file():
        what = "is a directory, not a GGUF file" if path.is_dir() else "does not exist"
        raise ModelError(f"{field}: {path} {what}")
    with path.open("rb") as f:
        if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise ModelError(f"{field}: {path} is not a GGUF file (it does not start with GGUF)")


def check_gguf_extra(field: str = SOURCE_FIELD) -> None:
    """One line naming the extra unless a GGUF file can be converted here."""
    missing = missing_modules(GGUF_MODULES)
    if missing:
        raise ModelError(
            f"{field}: converting a GGUF file needs the {GGUF_EXTRA} extra ({', '.join(missing)} "
            f"missing): pip install 'agpo[{GGUF_EXTRA}]'"
        )


def cache_key(path: Path) -> str:
    """The cache directory's name for ``path``: its name, and a digest of where it is, its size,
    its modification time and :data:`CONVERSION`, so a different or changed file is a
    different directory (no hashing of gigabytes on every start)."""
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CONVERSION}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.name.removesuffix(".gguf"))[:64]
    return f"gguf-{stem}-{digest}"


def gguf_model_dir(path: Path, cache_dir: Path, field: str = SOURCE_FIELD) -> Path:
    """The converted directory of GGUF file ``path`` in ``cache_dir``, converted on first use."""
    path = Path(path).expanduser()
    check_gguf_file(path, field)
    target = Path(cache_dir) / cache_key(path)
    if not is_model_dir(target):  # converted already: the extra is not needed to load it
        check_gguf_extra(field)
    return build_once(target, lambda tmp: convert_gguf(path, tmp, field))


def packaged_model_dir(name: str, cache_dir: Path) -> Path:
    """The converted directory of the packaged builtin model ``name`` (a builtin builder)."""
    return gguf_model_dir(packaged_file(name), cache_dir, NAME_FIELD)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def convert_gguf(path: Path, out_dir: Path, field: str = SOURCE_FIELD) -> Path:
    """Dequantize GGUF file ``path`` to float32 and save it into ``out_dir`` as a Hugging Face
    directory: safetensors weights, the config without ``quantization_config``, the tokenizer
    (with its chat template) and a bare generation config."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(path.parent), path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, OSError) as err:  # the file's content, not our code
        raise ModelError(
            f"{field}: transformers {transformers.__version__} cannot dequantize {path} "
            f"({_first_line(err).rstrip('.')}); use a GGUF file of an architecture it supports "
            "(llama, qwen2, mistral, ...) or a Hugging Face directory (spec.model.source.path)"
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # what makes save_pretrained refuse
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    # Sampling defaults belong to the caller, not to the checkpoint: a bare generation_config
    # keeps vLLM and transformers from silently applying the file's top_k etc.
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stat = path.stat()
    provenance = {
        "gguf": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "conversion": CONVERSION,
        "transformers": transformers.__version__,
    }
    (out_dir / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agpo_trainer.models.gguf OUT_DIR (--builtin NAME | --file PATH)``: convert
    into OUT_DIR (skipped when it already holds a model: a restarted init container). A
    mistake is one ``agpo: error:`` line and exit code 1."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m agpo_trainer.models.gguf")
    parser.add_argument("out_dir", type=Path, help="directory to write the HF model into")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--builtin", choices=sorted(PACKAGED), help="a packaged builtin model")
    source.add_argument("--file", type=Path, help="a GGUF file")
    args = parser.parse_args(argv)
    try:
        if args.builtin:
            gguf, field = packaged_file(args.builtin), NAME_FIELD
        else:
            gguf, field = args.file, SOURCE_FIELD
        if is_model_dir(args.out_dir):
            print(f"model already in {args.out_dir}")
            return 0
        check_gguf_file(gguf, field)
        check_gguf_extra(field)
        build_once(args.out_dir, lambda tmp: convert_gguf(gguf, tmp, field))
    except ModelError as err:
        print(f"agpo: error: {err}", file=sys.stderr, flush=True)
        return 1
    print(f"converted {gguf} into {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
