"""The whole resource: ``AGPOJobSpec`` with its cross-section rules, the status, ``AGPOJob``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from agpo_api.base import (
    DNS1123_LABEL,
    ApiModel,
    DnsLabel,
    Rule,
)
from agpo_api.catalog import LENGTH_REWARDS, POLICY_LOSSES, cel_list
from agpo_api.models.algorithm import AlgorithmSpec
from agpo_api.models.common import MAX_JOB_NAME_LENGTH, LocalObjectReference, NonNegativeInt
from agpo_api.models.evaluation import TASKS_WITH_SPLITS, EvaluationSpec, has_eval_split
from agpo_api.models.inputs import DatasetSpec, ModelSpec
from agpo_api.models.presets import cel_effective
from agpo_api.models.tracking import TrackingSpec
from agpo_api.models.training import TrainingSpec
from agpo_api.models.workloads import MetricsSpec, RolloutSpec, RunPolicy, TrainerSpec
from agpo_api.vocabulary import Phase

# Policy losses that need every response of a prompt in one gradient step, length rewards that
# read maxTokens/bufferTokens (catalog traits: the rules are written over traits, not names).
_WHOLE_GROUPS = POLICY_LOSSES.having(lambda t: t.whole_groups)
_LIMITED = LENGTH_REWARDS.having(lambda t: t.limit)


class AGPOJobSpec(ApiModel):
    """One RL post-training run."""

    model: ModelSpec
    dataset: DatasetSpec
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    tracking: TrackingSpec = Field(
        default_factory=TrackingSpec,
        description="Experiment trackers (MLflow, TensorBoard, W&B) fed by rank 0; none by "
        "default.",
    )
    evaluation: EvaluationSpec | None = Field(
        default=None,
        description="Held-out evaluation; unset = the defaults (at the end, on the builtin "
        "task's eval split when it has one; no evaluation for other datasets).",
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Pull secrets for every pod."
    )

    rules = (
        Rule(
            "training.maxCompletionTokens",
            "self.training.maxPromptTokens + self.training.maxCompletionTokens "
            "<= self.rollout.maxModelLen",
            "training.maxPromptTokens + training.maxCompletionTokens must not exceed "
            "rollout.maxModelLen; lower them or raise rollout.maxModelLen",
            lambda s: (
                s.training.max_prompt_tokens + s.training.max_completion_tokens
                <= s.rollout.max_model_len
            ),
        ),
        Rule(
            "training.promptsPerStep",
            "(self.training.promptsPerStep * self.algorithm.groupSize) "
            "% (self.trainer.nodes * self.trainer.procsPerNode) == 0",
            "training.promptsPerStep * algorithm.groupSize must be divisible by "
            "trainer.nodes * trainer.procsPerNode (every process gets the same share)",
            lambda s: (
                (s.training.prompts_per_step * s.algorithm.group_size)
                % (s.trainer.nodes * s.trainer.procs_per_node)
                == 0
            ),
        ),
        Rule(
            "training.miniBatches",
            "(self.training.promptsPerStep * self.algorithm.groupSize) % "
            "(self.trainer.nodes * self.trainer.procsPerNode * self.training.miniBatches) == 0",
            "training.promptsPerStep * algorithm.groupSize must be divisible by "
            "trainer.nodes * trainer.procsPerNode * training.miniBatches (every mini-batch of "
            "every process gets the same share); lower miniBatches or raise promptsPerStep",
            lambda s: (
                (s.training.prompts_per_step * s.algorithm.group_size)
                % (s.trainer.nodes * s.trainer.procs_per_node * s.training.mini_batches)
                == 0
            ),
        ),
        Rule(
            "algorithm.policyLoss",
            f"!({cel_effective('self.algorithm', 'policyLoss')} in {cel_list(_WHOLE_GROUPS)}) || "
            "self.training.promptsPerStep % "
            "(self.trainer.nodes * self.trainer.procsPerNode * self.training.miniBatches) == 0",
            "policyLoss gvpo needs all responses of a prompt in the same gradient step: "
            "training.promptsPerStep must be divisible by trainer.nodes * trainer.procsPerNode "
            "* training.miniBatches (whole groups per process and mini-batch)",
            lambda s: (
                not s.algorithm.needs_whole_groups()
                or s.training.prompts_per_step
                % (s.trainer.nodes * s.trainer.procs_per_node * s.training.mini_batches)
                == 0
            ),
        ),
        Rule(
            "rollout.weightSync.backend",
            "self.rollout.weightSync.backend != 'nccl' || "
            "(self.trainer.gpusPerNode > 0 && self.rollout.gpusPerReplica > 0)",
            "weightSync.backend nccl needs GPUs on trainer and rollout pods; use gloo on CPU",
            lambda s: (
                s.rollout.weight_sync.backend != "nccl"
                or (s.trainer.gpus_per_node > 0 and s.rollout.gpus_per_replica > 0)
            ),
        ),
        Rule(
            "training.checkpoint.storage.accessModes",
            "self.trainer.nodes == 1 || !has(self.training.checkpoint.storage) || "
            "!has(self.training.checkpoint.storage.accessModes) || "
            "'ReadWriteMany' in self.training.checkpoint.storage.accessModes",
            "training.checkpoint.storage.accessModes must include ReadWriteMany when "
            "trainer.nodes > 1 (every trainer pod mounts the checkpoints, on different nodes); "
            "add ReadWriteMany, or leave accessModes unset to get it",
            lambda s: (
                s.trainer.nodes == 1
                or s.training.checkpoint.storage is None
                or s.training.checkpoint.storage.access_modes is None
                or "ReadWriteMany" in s.training.checkpoint.storage.access_modes
            ),
        ),
        Rule(
            "training.formatWarmupSteps",
            "self.training.formatWarmupSteps == 0 || has(self.dataset.source.builtin)",
            "training.formatWarmupSteps needs dataset.source.builtin (it teaches that task's "
            "answer format); set it to 0 for other datasets",
            lambda s: s.training.format_warmup_steps == 0 or s.dataset.source.builtin is not None,
        ),
        Rule(
            "algorithm.lengthReward.bufferTokens",
            "!has(self.algorithm.lengthReward) || !has(self.algorithm.lengthReward.type) || "
            f"!(self.algorithm.lengthReward.type in {cel_list(_LIMITED)}) || "
            "!has(self.algorithm.lengthReward.bufferTokens) || "
            "has(self.algorithm.lengthReward.maxTokens) || "
            "self.algorithm.lengthReward.bufferTokens < self.training.maxCompletionTokens",
            "lengthReward.bufferTokens must be smaller than training.maxCompletionTokens",
            lambda s: (
                s.algorithm.length_reward is None
                or s.algorithm.length_reward.type not in LENGTH_REWARDS.having(lambda t: t.limit)
                or s.algorithm.length_reward.buffer_tokens is None
                or s.algorithm.length_reward.max_tokens is not None
                or s.algorithm.length_reward.buffer_tokens < s.training.max_completion_tokens
            ),
        ),
        Rule(
            "evaluation.source",
            "!has(self.evaluation) || (has(self.evaluation.source) && "
            "!has(self.evaluation.source.split)) || "
            "(has(self.dataset.source.builtin) && "
            f"self.dataset.source.builtin.task in {list(TASKS_WITH_SPLITS)})",
            "evaluation needs a source (file, hf or fraction) unless the dataset is a builtin "
            f"task with a held-out split ({', '.join(TASKS_WITH_SPLITS)}); split: eval is only "
            "for those",
            lambda s: (
                s.evaluation is None
                or (s.evaluation.source is not None and s.evaluation.source.split is None)
                or (
                    s.dataset.source.builtin is not None
                    and has_eval_split(s.dataset.source.builtin.task)
                )
            ),
        ),
    )

    def effective_evaluation(self) -> EvaluationSpec | None:
        """The evaluation that runs: ``evaluation`` (or its defaults), None when none does
        (disabled, or no source: a dataset without a held-out split and none given)."""
        ev = self.evaluation or EvaluationSpec()
        if not ev.enabled():
            return None
        builtin = self.dataset.source.builtin
        if ev.source is None and (builtin is None or not has_eval_split(builtin.task)):
            return None
        return ev


# --------------------------------------------------------------------------- status
class Condition(ApiModel):
    """A metav1.Condition."""

    type: Annotated[str, Field(max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[
        str, Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    ]
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: str
    observed_generation: NonNegativeInt | None = None


class AGPOJobStatus(ApiModel):
    """What the operator observed; written only by the operator."""

    # The enum of agpo_api.vocabulary (one list for all); not strict: YAML gives plain strings.
    phase: Annotated[Phase | None, Field(strict=False)] = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    step: int | None = None
    total_steps: int | None = None
    reward_mean: float | None = None
    completion_tokens_mean: float | None = None
    zero_variance_fraction: float | None = None
    policy_version: int | None = None
    eval_step: int | None = Field(default=None, description="Step of the latest evaluation.")
    eval_accuracy: float | None = Field(
        default=None, description="Greedy accuracy on the evaluation prompts (latest)."
    )
    eval_mean_at_k: float | None = Field(
        default=None, description="Mean accuracy of the k sampled evaluation completions."
    )
    eval_pass_at_k: float | None = Field(
        default=None, description="Fraction of evaluation prompts with a correct sample of k."
    )
    eval_reasoning_tokens: float | None = Field(
        default=None, description="Mean reasoning tokens of correct greedy evaluation answers."
    )
    serving_servers: int | None = Field(
        default=None,
        description="Rollout servers serving the newest pushed weights (the trainer's count).",
    )
    rollout_replicas: int | None = Field(
        default=None,
        description="Ready rollout pods: the scale subresource's status replicas.",
    )
    rollout_selector: str | None = Field(
        default=None,
        description="Label selector of the rollout pods, for the scale subresource (HPA/KEDA).",
    )
    restarts: int | None = None
    start_time: str | None = None
    # The times the run policy's timeouts count from (decisions read them from here, never
    # from the operator's memory, so they survive operator restarts).
    waiting_since: str | None = Field(
        default=None,
        description="Since when the pods are waiting to run (creation, resume or restart); "
        "unset while every pod runs. startupTimeoutSeconds counts from here.",
    )
    last_progress_time: str | None = Field(
        default=None,
        description="When the trainer last reported a new step (or started running); "
        "progressTimeoutSeconds counts from here.",
    )
    completion_time: str | None = None
    message: str | None = None


class ObjectMeta(ApiModel):
    """The subset of metav1.ObjectMeta that ``agpo validate`` checks; the rest passes through."""

    model_config = ConfigDict(**{**ApiModel.model_config, "extra": "allow"})

    name: Annotated[str, Field(pattern=DNS1123_LABEL, max_length=MAX_JOB_NAME_LENGTH)] | None = None
    namespace: DnsLabel | None = None
    generate_name: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class AGPOJob(ApiModel):
    """The whole resource, as in a YAML file."""

    api_version: Literal["agpo.dev/v1alpha1"]
    kind: Literal["AGPOJob"]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: AGPOJobSpec
    status: AGPOJobStatus | None = None
