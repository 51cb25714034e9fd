"""The trainer's metrics table: one row per figure, from which every place that shows it is
derived (the ``step``/``eval`` log lines and ``/status``, the Prometheus series, the dashboard).

A row names the field of the trainer's typed statistics that carries the figure
(``agpo_trainer.stats``), and the naming scheme derives the rest, so a new figure is one row:

* ``/status`` and the log lines: the field in camelCase (``reward_mean`` -> ``rewardMean``);
* Prometheus: ``agpo_`` + the field for a gauge or a counter (a counter's ``_total`` is added by
  the client library), ``agpo_`` + the field with ``_seconds`` replaced by
  ``_duration_seconds`` for a histogram of durations;
* a figure of the policy update says how its micro-batches and ranks combine (``reduce``): a
  mean weighted by each part's share of the loss's denominator, or the min or max.

Pure: no prometheus-client, no torch (the operator and tests read it too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic.alias_generators import to_camel

Kind = Literal["gauge", "counter", "histogram"]
#: Where the trainer takes the value: the rollout of a step (``RolloutStats``), its update
#: (``UpdateStats``), the step as a whole (``StepStats``), an evaluation (``EvalStats``), or an
#: event outside a step's record (a push, a skipped prompt).
Source = Literal["rollout", "update", "step", "eval", "event"]
Reduce = Literal["mean", "min", "max"]

#: Histogram buckets of token counts.
TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class Metric:
    """One figure the trainer reports."""

    field: str  # the stats field that carries it (snake_case)
    kind: Kind
    help: str
    source: Source
    status: bool = True  # on /status and in the log line (False: Prometheus only)
    event: bool = False  # Prometheus updated where it happens (a push), not from the record
    reduce: Reduce = "mean"  # update figures: how micro-batches and ranks combine
    absent: float | None = None  # update figures: the value when the loss does not report it
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None  # histograms; None: the client's defaults
    prometheus: bool = True  # exported as a Prometheus series

    @property
    def wire(self) -> str:
        """The camelCase name on ``/status`` and in the log lines."""
        return to_camel(self.field)

    @property
    def series(self) -> str:
        """The Prometheus name (without a counter's ``_total``)."""
        if self.kind == "histogram" and self.field.endswith("_seconds"):
            return f"agpo_{self.field.removesuffix('_seconds')}_duration_seconds"
        return f"agpo_{self.field}"


def _g(field: str, help: str, source: Source, **kw: object) -> Metric:
    return Metric(field, "gauge", help, source, **kw)  # type: ignore[arg-type]


METRICS: tuple[Metric, ...] = (
    # ------------------------------------------------------------------ the run
    Metric("steps", "counter", "Rollout batches trained.", "event", status=False),
    _g("step", "The last finished step.", "step", prometheus=False),
    _g("total_steps", "Steps the job will take.", "step"),
    _g("policy_version", "Version of the policy weights.", "step"),
    _g("served_policy_version", "Policy version the rollout servers serve.", "event",
       status=False),
    _g("rollout_policy_version", "Policy version that generated the step's batch.", "step",
       prometheus=False),
    _g("batch_staleness", "Policy versions between the weights that generated the step's "
       "batch and the policy it trained (training.maxStaleness).", "step"),
    # ------------------------------------------------------------------ rollout
    _g("reward_mean", "Mean total reward of the step.", "rollout"),
    _g("reward_std", "Std of the total reward of the step.", "rollout", status=False),
    _g("accuracy", "Fraction of correct completions.", "rollout"),
    _g("reward_component_mean", "Mean of each reward term (by its name).", "rollout",
       status=False, labels=("reward",)),
    _g("zero_variance_fraction", "Fraction of groups whose rewards are all equal.", "rollout"),
    _g("completion_tokens_mean", "Mean completion (reasoning) length in tokens.", "rollout"),
    Metric("completion_tokens", "histogram", "Completion lengths in tokens.", "event",
           status=False, buckets=TOKEN_BUCKETS),
    _g("correct_completion_tokens_mean", "Mean length in tokens of the correct completions.",
       "rollout"),
    _g("correct_reasoning_tokens_mean", "Mean tokens before the answer marker of the correct "
       "completions.", "rollout"),
    _g("all_correct_fraction", "Fraction of groups whose completions are all correct.",
       "rollout"),
    _g("all_wrong_fraction", "Fraction of groups whose completions are all wrong.", "rollout"),
    _g("completion_clipped_ratio", "Fraction of completions cut at maxCompletionTokens.",
       "rollout", status=False),
    Metric("rollout_tokens", "counter", "Completion tokens generated.", "rollout",
           status=False),
    _g("resample_rounds", "Extra prompt batches drawn by zeroVariance: resample this step.",
       "rollout", prometheus=False),
    Metric("resampled_prompts", "counter", "Extra prompts drawn by zeroVariance: resample.",
           "event", status=False),
    Metric("skipped_prompts", "counter", "Prompts skipped for exceeding maxPromptTokens.",
           "event", status=False),
    # ------------------------------------------------------------------ update
    _g("loss", "Loss of the step (policy loss plus the KL term).", "update", absent=0.0),
    _g("policy_loss", "Policy loss of the step, without the KL term.", "update", status=False,
       absent=0.0),
    _g("kl", "Mean k3 KL to the reference policy (0 without one).", "update", absent=0.0),
    _g("entropy", "Mean token entropy of the policy.", "update", absent=0.0),
    _g("clip_ratio", "Fraction of tokens whose ratio was clipped (below or above).", "update"),
    _g("clip_ratio_low", "Fraction of tokens clipped below (ratio < 1 - clip.low; clipped: "
       "A < 0).", "update", absent=0.0),
    _g("clip_ratio_high", "Fraction of tokens clipped above (ratio > 1 + clip.high; clipped: "
       "A > 0).", "update", absent=0.0),
    _g("ratio_mean", "Mean importance ratio of the included tokens.", "update", absent=1.0),
    _g("ratio_min", "Smallest importance ratio of an included token.", "update", reduce="min"),
    _g("ratio_max", "Largest importance ratio of an included token.", "update", reduce="max"),
    _g("rollout_trainer_kl", "Mean k3 KL(rollout engine || trainer) of the sampled tokens "
       "(algorithm.rolloutCorrection on).", "update"),
    _g("is_weight_mean", "Mean rollout-correction weight of the included tokens (tis: "
       "truncated, mis: 0 or 1).", "update"),
    _g("is_masked_ratio", "Fraction of tokens the rollout correction dropped (mis).",
       "update"),
    _g("gvpo_mse", "GVPO's objective: the squared gap to the implied rewards (policyLoss gvpo).",
       "update", status=False),
    _g("grad_norm", "Gradient norm before clipping.", "update"),
    _g("learning_rate", "Current learning rate.", "update", status=False),
    # ------------------------------------------------------------------ time
    Metric("step_seconds", "histogram", "Wall time of a whole step.", "step"),
    Metric("rollout_seconds", "histogram", "Wall time of generation per step.", "rollout"),
    _g("reward_seconds", "Wall time of scoring per step.", "rollout", prometheus=False),
    _g("train_seconds", "Wall time of the update per step.", "step", prometheus=False),
    Metric("weight_sync_seconds", "histogram", "Wall time of pushing weights to vLLM.", "step",
           event=True),
    Metric("server_push_seconds", "histogram", "Wall time of one server's weight push (a "
           "lagging server's ends at weightSync.timeoutSeconds).", "event", status=False,
           labels=("server",)),
    # ------------------------------------------------------------------ the rollout pool
    _g("rollout_servers", "vLLM servers joined to the weight transport.", "step"),
    _g("serving_servers", "vLLM servers serving the newest pushed weights (the others lag "
       "and get no prompts).", "step"),
    # ------------------------------------------------------------------ experiment trackers
    Metric("tracker_dropped", "counter", "Records an experiment tracker (spec.tracking) did "
           "not take: it was down, failing or slower than the run.", "event", status=False,
           labels=("tracker",)),
    # ------------------------------------------------------------------ evaluation
    _g("eval_step", "Step of the latest evaluation.", "eval"),
    _g("eval_accuracy", "Greedy accuracy on the evaluation prompts.", "eval"),
    _g("eval_mean_at_k", "Mean accuracy of the k sampled evaluation answers.", "eval"),
    _g("eval_pass_at_k", "Fraction of evaluation prompts with a correct answer among k samples.",
       "eval"),
    _g("eval_reasoning_tokens", "Mean tokens before the answer marker of correct greedy "
       "evaluation answers.", "eval"),
    _g("eval_seconds", "Wall time of the latest evaluation.", "eval", status=False),
)  # fmt: skip

BY_FIELD: dict[str, Metric] = {m.field: m for m in METRICS}


def reduction(field: str) -> Reduce:
    """How the update figure ``field`` combines over micro-batches and ranks (``mean`` for a
    figure the table does not list)."""
    metric = BY_FIELD.get(field)
    return metric.reduce if metric is not None else "mean"


def rows(*sources: Source, status: bool | None = None) -> tuple[Metric, ...]:
    """The rows of these sources (and, when given, of this ``status`` flag), in table order."""
    return tuple(
        m for m in METRICS if m.source in sources and (status is None or m.status == status)
    )
