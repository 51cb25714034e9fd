"""``spec.training``: the optimisation, sampling and checkpoint settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from agpo_api.base import (
    ApiModel,
    DnsSubdomain,
    Quantity,
    Rule,
    at_most_one,
)
from agpo_api.models.common import NonNegativeInt, PositiveInt

# --------------------------------------------------------------------------- training
AccessMode = Literal["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"]
#: What a provisioned checkpoint claim asks for when ``size`` is unset.
DEFAULT_CHECKPOINT_SIZE = "10Gi"


class CheckpointStorage(ApiModel):
    """Checkpoint storage the operator provisions: a PersistentVolumeClaim ``<job>-checkpoints``
    (the default, with every field unset), or an emptyDir when ``emptyDir`` is true."""

    empty_dir: bool = Field(
        default=False,
        description="Keep checkpoints in an emptyDir instead: they are lost whenever the trainer "
        "pod is replaced (restart, eviction, node loss), so a restart starts from step 0. The "
        "job gets the EphemeralCheckpoints condition and a Warning event.",
    )
    size: Quantity | None = Field(
        default=None, description=f"Requested claim size; default {DEFAULT_CHECKPOINT_SIZE}."
    )
    storage_class_name: DnsSubdomain | None = Field(
        default=None, description="StorageClass of the claim; default: the cluster's default."
    )
    access_modes: list[AccessMode] | None = Field(
        default=None,
        min_length=1,
        max_length=3,
        description="Access modes of the claim; default ReadWriteOnce with one trainer node, "
        "ReadWriteMany with more (every trainer pod mounts the checkpoints).",
    )
    reclaim: Literal["Delete", "Retain"] = Field(
        default="Delete",
        description="Delete: the job owns the claim (deleted with the job). Retain: the claim has "
        "no owner and outlives the job; a new job of the same name resumes from it; delete it "
        "by hand (kubectl delete pvc <job>-checkpoints).",
    )

    rules = (
        Rule(
            "emptyDir",
            "!self.emptyDir || !(has(self.size) || has(self.storageClassName) || "
            "has(self.accessModes))",
            "checkpoint.storage.emptyDir excludes size, storageClassName and accessModes (they "
            "describe a claim); remove them or set emptyDir to false",
            lambda s: (
                not s.empty_dir
                or (s.size is None and s.storage_class_name is None and s.access_modes is None)
            ),
        ),
    )

    def modes(self, nodes: int) -> list[str]:
        """The claim's access modes (the default depends on the number of trainer nodes)."""
        if self.access_modes is not None:
            return list(self.access_modes)
        return ["ReadWriteMany"] if nodes > 1 else ["ReadWriteOnce"]


class CheckpointSpec(ApiModel):
    """Checkpointing: Hugging Face weights + optimizer/scheduler/RNG/data cursor.

    Where they go: ``pvc`` (an existing claim), else ``storage`` -- by default a claim the
    operator provisions for the job, so a replaced trainer pod resumes from the newest one."""

    every_steps: PositiveInt = Field(default=50, description="Save every N steps (and at the end).")
    keep: PositiveInt = Field(default=3, description="Keep the newest N checkpoints.")
    pvc: DnsSubdomain | None = Field(
        default=None, description="An existing PVC to write checkpoints to (not provisioned)."
    )
    storage: CheckpointStorage | None = Field(
        default=None,
        description="Storage the operator provisions (without pvc): a claim <job>-checkpoints of "
        f"{DEFAULT_CHECKPOINT_SIZE} by default, or an emptyDir. agpo run uses its local workdir.",
    )
    path: str | None = Field(
        default=None, description="Directory for checkpoints (inside the PVC when pvc is set)."
    )

    rules = (
        Rule(
            "storage",
            "!(has(self.pvc) && has(self.storage))",
            "set either checkpoint.pvc (an existing claim) or checkpoint.storage (provisioned by "
            "the operator), not both",
            at_most_one("pvc", "storage"),
        ),
    )

    def provisioned(self) -> CheckpointStorage | None:
        """The storage the operator provisions: None for an existing ``pvc``."""
        if self.pvc is not None:
            return None
        return self.storage if self.storage is not None else CheckpointStorage()


class TrainingSpec(ApiModel):
    """Optimization and sampling settings."""

    steps: PositiveInt = Field(default=100, description="Optimizer steps.")
    prompts_per_step: PositiveInt = Field(default=8, description="Prompts per step (x groupSize).")
    learning_rate: float = Field(default=1e-6, gt=0, le=1, description="Peak learning rate.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        default="constant", description="Schedule after warmup."
    )
    warmup_steps: NonNegativeInt = Field(default=0, description="Linear warmup steps.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    max_prompt_tokens: PositiveInt = Field(default=512, description="Longer prompts are skipped.")
    max_completion_tokens: PositiveInt = Field(default=1024, description="Generation limit.")
    temperature: float = Field(default=1.0, gt=0, le=2, description="Sampling temperature.")
    top_p: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Nucleus sampling; only 1 (no truncation): the trainer's log-probs are of "
        "the full distribution, so a truncated sampler would bias the importance ratio.",
    )
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=8,
        description="Stop strings: a completion ends at the first one (besides the model's end "
        "token), in training rollouts and in evaluation alike. The string's tokens stay in the "
        "completion the trainer trains on; the text that is scored ends before it. A completion "
        "that reaches maxCompletionTokens without an end token or a stop string is truncated, "
        "and a truncated completion is wrong (docs/algorithm.md).",
    )
    mini_batches: PositiveInt = Field(
        default=1,
        description="Optimizer steps per rollout batch: the batch is split into this many "
        "mini-batches (verl ppo_mini_batch_size, TRL steps_per_generation); 1 = one step.",
    )
    epochs: PositiveInt = Field(
        default=1,
        description="Passes over the rollout batch (verl ppo_epochs, TRL num_iterations); each "
        "pass takes miniBatches optimizer steps. Old log-probs stay the rollout's.",
    )
    max_staleness: int = Field(
        default=0,
        ge=0,
        le=1,
        description="Overlapped rollouts: 1 = the servers generate step t+1's batch with step "
        "t's weights while the trainer trains on step t (one-step off-policy; the importance "
        "ratio is taken against the rollout log-probs); 0 = strictly on-policy.",
    )
    seed: int = Field(default=0, description="Seed for data order, sampling and init.")
    format_warmup_steps: NonNegativeInt = Field(
        default=0,
        description="Supervised steps before RL for a fresh model on a builtin task; 0 = off. "
        "arithmetic: the answer format (a digit, then end of text) with random answers, so "
        "that RL alone teaches the arithmetic. bitcount: the task's mixed formats (filler, "
        "scratch) with right answers on its warmup split only, long strings rarely (a "
        "mediocre start RL can improve; about 200 steps), cached per settings; bitcount-copy: "
        "the same with its scratch, direct answers only up to 10 bits (about 1000 steps: a "
        "start where the scratch pays on long strings only). chainsum: the same mixed formats, chain lengths uniform. Only for "
        "dataset.source.builtin.",
    )
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints.")
    resume: bool = Field(default=True, description="Resume from the newest complete checkpoint.")

    rules = (
        Rule(
            "warmupSteps",
            "self.warmupSteps <= self.steps",
            "warmupSteps must not exceed steps",
            lambda s: s.warmup_steps <= s.steps,
        ),
        Rule(
            "topP",
            "self.topP == 1.0",
            "topP < 1 samples from a truncated distribution while the trainer's log-probs are "
            "of the full one, which biases the importance ratio; set topP: 1 (use temperature "
            "to sharpen sampling)",
            lambda s: s.top_p == 1.0,
        ),
    )
