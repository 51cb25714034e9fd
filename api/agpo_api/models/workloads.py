"""The pods and their policy: ``spec.trainer``, ``spec.rollout``, ``spec.runPolicy``, ``spec.metrics``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from agpo_api.base import (
    DNS1123_LABEL,
    ApiModel,
    DnsSubdomain,
    Rule,
)
from agpo_api.layout import NCCL_SYNC_PORTS
from agpo_api.models.common import (
    EnvVar,
    NonNegativeInt,
    Port,
    PositiveInt,
    ResourceRequirements,
    Toleration,
)


# --------------------------------------------------------------------------- pods
class TrainerSpec(ApiModel):
    """The torchrun training group: ``nodes`` pods x ``procsPerNode`` processes."""

    image: str | None = Field(default=None, description="Trainer image; default: the operator's.")
    nodes: PositiveInt = Field(default=1, description="Trainer pods (torchrun nnodes).")
    procs_per_node: PositiveInt = Field(
        default=1, description="Processes per pod (nproc_per_node)."
    )
    gpus_per_node: NonNegativeInt = Field(default=1, description="nvidia.com/gpu per pod; 0 = CPU.")
    strategy: Literal["ddp", "fsdp"] = Field(default="ddp", description="ddp or fsdp (FSDP2).")
    micro_batch_tokens: PositiveInt | None = Field(
        default=None,
        description="Micro-batches by a token budget (prompt + completion tokens, whole groups "
        "of sequences up to this many); unset = a fixed count of sequences.",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in backward (less memory, about a third more compute).",
    )
    logprob_chunk_tokens: PositiveInt = Field(
        default=1024,
        description="Log-probs and entropy are computed over this many response positions at a "
        "time, so the full-vocabulary logits are never held for a whole micro-batch.",
    )
    threads_per_proc: PositiveInt | None = Field(
        default=None,
        description="Torch CPU threads of each trainer process (torch.set_num_threads); unset: "
        "what OMP_NUM_THREADS says (agpo run sets 1 per process). On a CPU machine whose "
        "rollout server idles while the trainer trains, one rank may use every core.",
    )
    resources: ResourceRequirements | None = Field(default=None, description="Pod resources.")
    env: list[EnvVar] = Field(default_factory=list, max_length=128, description="Extra env.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)

    rules = (
        Rule(
            "procsPerNode",
            "self.gpusPerNode == 0 || self.procsPerNode <= self.gpusPerNode",
            "procsPerNode must not exceed gpusPerNode on GPU nodes (one process per GPU)",
            lambda s: s.gpus_per_node == 0 or s.procs_per_node <= s.gpus_per_node,
        ),
    )


#: A push longer than this marks a server lagging (verl acknowledges in 1800 s, TRL's HTTP
#: calls time out; a 7B bf16 model moves in well under a minute over a 10 Gb/s link).
DEFAULT_WEIGHT_SYNC_TIMEOUT_SECONDS = 120


class WeightSyncSpec(ApiModel):
    """How new weights reach the vLLM servers."""

    backend: Literal["nccl", "gloo"] = Field(
        default="nccl", description="nccl on GPU; gloo (TCP broadcast) on CPU."
    )
    every_steps: PositiveInt = Field(default=1, description="Push weights every N steps.")
    port: Port = Field(default=29600, description="Trainer port the rollout workers join.")
    timeout_seconds: PositiveInt = Field(
        default=DEFAULT_WEIGHT_SYNC_TIMEOUT_SECONDS,
        description="Longest one server's push may take. A server past it is lagging: it gets "
        "no prompts until it is pushed to again, the others go on (WeightSyncDegraded); the "
        "trainer restarts only when no server serves the new weights.",
    )


class RolloutSpec(ApiModel):
    """vLLM rollout servers: ``replicas`` individually addressable OpenAI-compatible servers."""

    image: str | None = Field(default=None, description="vLLM image; default: the operator's.")
    replicas: PositiveInt = Field(
        default=1,
        description="vLLM servers; each receives weights. May change while the job runs "
        "(kubectl scale): the trainer joins new servers at a step boundary and drops gone ones.",
    )
    gpus_per_replica: NonNegativeInt = Field(default=1, description="GPUs per server; 0 = CPU.")
    tensor_parallel_size: PositiveInt = Field(default=1, description="vLLM tensor parallelism.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="vLLM memory share.")
    max_model_len: PositiveInt = Field(default=4096, description="vLLM context length.")
    resources: ResourceRequirements | None = Field(default=None, description="Pod resources.")
    extra_args: list[str] = Field(default_factory=list, max_length=64, description="vLLM flags.")
    env: list[EnvVar] = Field(default_factory=list, max_length=128, description="Extra env.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    weight_sync: WeightSyncSpec = Field(default_factory=WeightSyncSpec, description="Weight sync.")

    rules = (
        Rule(
            "replicas",
            f"self.weightSync.backend != 'nccl' || (self.replicas <= {NCCL_SYNC_PORTS} && "
            f"self.weightSync.port + {NCCL_SYNC_PORTS - 1} <= 65535)",
            f"with weightSync.backend nccl, replicas must be at most {NCCL_SYNC_PORTS} and "
            f"weightSync.port + {NCCL_SYNC_PORTS - 1} at most 65535 (server i joins on "
            "weightSync.port + i; the trainer admits that block)",
            lambda s: (
                s.weight_sync.backend != "nccl"
                or (
                    s.replicas <= NCCL_SYNC_PORTS
                    and s.weight_sync.port + NCCL_SYNC_PORTS - 1 <= 65535
                )
            ),
        ),
        Rule(
            "tensorParallelSize",
            "self.gpusPerReplica == 0 ? self.tensorParallelSize == 1 : "
            "self.gpusPerReplica % self.tensorParallelSize == 0",
            "tensorParallelSize must divide gpusPerReplica (and be 1 on CPU)",
            lambda s: (
                s.tensor_parallel_size == 1
                if s.gpus_per_replica == 0
                else s.gpus_per_replica % s.tensor_parallel_size == 0
            ),
        ),
    )


#: Pods wait at most this long to run by default (an image pull or a scale-up takes minutes).
DEFAULT_STARTUP_TIMEOUT_SECONDS = 1800


#: The scheduler-plugins "as a second scheduler" deployment's name (its chart's values.yaml).
COSCHEDULING_SCHEDULER = "scheduler-plugins-scheduler"


class GangSpec(ApiModel):
    """All of a job's pods, trainer and rollout, admitted or scheduled together or not at all,
    so a half-started job never holds GPUs doing nothing (docs/operate.md "Gang admission")."""

    mode: Literal["kueue", "coscheduling"] = Field(
        description="kueue: every pod in one Kueue plain-pod group (labels queue-name and "
        "pod-group-name, annotation pod-group-total-count; needs runPolicy.queueName and "
        "Kueue's pod integration); coscheduling: a scheduler-plugins PodGroup (minMember = "
        "every pod) and the pods labelled scheduling.x-k8s.io/pod-group, scheduled by "
        f"runPolicy.schedulerName (default {COSCHEDULING_SCHEDULER})."
    )
    schedule_timeout_seconds: PositiveInt | None = Field(
        default=None,
        description="coscheduling: the PodGroup's scheduleTimeoutSeconds (how long the "
        "scheduler waits for the whole group before it retries); unset: the plugin's default.",
    )


class RunPolicy(ApiModel):
    """Restarts, deadlines, cleanup and scheduling (Kubeflow-style run policy)."""

    backoff_limit: NonNegativeInt = Field(
        default=3, description="Group restarts (from the newest checkpoint) before Failed."
    )
    active_deadline_seconds: PositiveInt | None = Field(
        default=None, description="Fail with DeadlineExceeded after this many seconds running."
    )
    startup_timeout_seconds: PositiveInt | None = Field(
        default=DEFAULT_STARTUP_TIMEOUT_SECONDS,
        description="Fail with StartupTimeout (naming the waiting pod and its reason, e.g. "
        "ImagePullBackOff or Unschedulable) when the pods are not all running and ready this "
        "many seconds after the job was created, resumed or restarted; time a Kueue-suspended "
        "trainer Job waits for admission does not count. null: wait forever.",
    )
    progress_timeout_seconds: PositiveInt | None = Field(
        default=None,
        description="Restart the group from its newest checkpoint (ProgressTimeout, counted "
        "against backoffLimit) when a running trainer reports no new step in /status for this "
        "many seconds; make it longer than the slowest step plus a checkpoint. Unset: off.",
    )
    ttl_seconds_after_finished: NonNegativeInt | None = Field(
        default=None, description="Delete the finished job after this many seconds."
    )
    suspend: bool = Field(default=False, description="Tear down pods, keep checkpoints.")
    clean_pod_policy: Literal["All", "Running", "None"] = Field(
        default="Running", description="Pods deleted when the job finishes."
    )
    scheduler_name: DnsSubdomain | None = Field(default=None, description="Pod scheduler.")
    priority_class_name: DnsSubdomain | None = Field(default=None, description="PriorityClass.")
    queue_name: Annotated[str, Field(pattern=DNS1123_LABEL, max_length=63)] | None = Field(
        default=None,
        description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name): on the trainer Job "
        "and the rollout StatefulSet, each admitted on its own, or with gang.mode kueue on "
        "every pod, admitted together.",
    )
    gang: GangSpec | None = Field(
        default=None,
        description="Admit or schedule every pod of the job together (Kueue pod group or "
        "scheduler-plugins coscheduling); unset: each workload on its own.",
    )

    rules = (
        Rule(
            "gang.mode",
            "!has(self.gang) || self.gang.mode != 'kueue' || has(self.queueName)",
            "runPolicy.gang.mode kueue needs runPolicy.queueName (the LocalQueue that admits "
            "the pod group); set it, or use mode coscheduling",
            lambda s: s.gang is None or s.gang.mode != "kueue" or s.queue_name is not None,
        ),
        Rule(
            "gang.scheduleTimeoutSeconds",
            "!has(self.gang) || self.gang.mode == 'coscheduling' || "
            "!has(self.gang.scheduleTimeoutSeconds)",
            "runPolicy.gang.scheduleTimeoutSeconds is the coscheduling PodGroup's; remove it "
            "under mode kueue (Kueue admits by quota, without a timeout)",
            lambda s: (
                s.gang is None
                or s.gang.mode == "coscheduling"
                or s.gang.schedule_timeout_seconds is None
            ),
        ),
    )

    @property
    def pod_scheduler(self) -> str | None:
        """The pods' schedulerName: the spec's, else coscheduling's scheduler under that mode."""
        if self.scheduler_name is None and self.gang and self.gang.mode == "coscheduling":
            return COSCHEDULING_SCHEDULER
        return self.scheduler_name


class MetricsSpec(ApiModel):
    """Prometheus metrics of the trainer."""

    port: Port = Field(default=9400, description="Trainer metrics and /status port.")
    pod_monitor: bool = Field(
        default=False, description="Create a PodMonitor (Prometheus Operator)."
    )
