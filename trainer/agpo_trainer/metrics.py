"""The trainer's Prometheus metrics and its JSON ``/status``, served by rank 0 on one port.

Names follow Prometheus practice: one prefix (``agpo_``), base units (seconds, tokens),
``_total`` for counters, no colons (reserved for recording rules). Each series' attribute
has the name of the :mod:`agpo_trainer.stats` field it shows. ``/status`` is what the operator
polls to fill ``status.step``, ``status.rewardMean``, ... (schema:
:class:`agpo_api.progress.TrainerProgress`).
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agpo_api.layout import METRICS_PATH, STATUS_PATH
from agpo_api.progress import TrainerProgress
from agpo_trainer.stats import EvalStats, StepStats

TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclass
class TrainerMetrics:
    """Every metric the trainer exports, in its own registry (no global state)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.steps = Counter("agpo_train_steps", "Optimizer steps taken.", registry=r)
        self.policy_version = Gauge(
            "agpo_policy_version", "Version of the policy weights.", registry=r
        )
        self.served_version = Gauge(
            "agpo_served_policy_version", "Policy version the rollout servers report.", registry=r
        )
        self.total_steps = Gauge("agpo_total_steps", "Steps the job will take.", registry=r)
        self.batch_staleness = Gauge(
            "agpo_batch_staleness",
            "Policy versions between the weights that generated the step's batch and the "
            "policy it trained (training.maxStaleness).",
            registry=r,
        )
        self.reward_mean = Gauge("agpo_reward_mean", "Mean total reward of the step.", registry=r)
        self.reward_std = Gauge(
            "agpo_reward_std", "Std of the total reward of the step.", registry=r
        )
        self.accuracy = Gauge("agpo_accuracy", "Fraction of correct completions.", registry=r)
        self.reward_component = Gauge(
            "agpo_reward_component_mean", "Mean of each reward term.", ["reward"], registry=r
        )
        self.zero_variance_fraction = Gauge(
            "agpo_zero_variance_group_ratio",
            "Fraction of groups whose rewards are all equal.",
            registry=r,
        )
        self.completion_tokens_mean = Gauge(
            "agpo_completion_tokens_mean",
            "Mean completion (reasoning) length in tokens.",
            registry=r,
        )
        self.completion_tokens = Histogram(
            "agpo_completion_tokens",
            "Completion lengths in tokens.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.completion_clipped_ratio = Gauge(
            "agpo_completion_clipped_ratio",
            "Fraction of completions cut at maxCompletionTokens.",
            registry=r,
        )
        self.loss = Gauge("agpo_loss", "Policy loss of the step.", registry=r)
        self.kl = Gauge("agpo_kl", "Mean k3 KL to the reference policy.", registry=r)
        self.entropy = Gauge("agpo_entropy", "Mean token entropy of the policy.", registry=r)
        self.clip_ratio = Gauge(
            "agpo_clip_ratio", "Fraction of tokens whose ratio was clipped.", registry=r
        )
        self.grad_norm = Gauge("agpo_grad_norm", "Gradient norm before clipping.", registry=r)
        self.learning_rate = Gauge("agpo_learning_rate", "Current learning rate.", registry=r)
        self.step_duration = Histogram(
            "agpo_step_duration_seconds", "Wall time of a whole step.", registry=r
        )
        self.rollout_duration = Histogram(
            "agpo_rollout_duration_seconds", "Wall time of generation per step.", registry=r
        )
        self.weight_sync_duration = Histogram(
            "agpo_weight_sync_duration_seconds", "Wall time of pushing weights to vLLM.", registry=r
        )
        self.rollout_tokens = Counter(
            "agpo_rollout_tokens", "Completion tokens generated.", registry=r
        )
        self.resampled_prompts = Counter(
            "agpo_resampled_prompts", "Extra prompts drawn by zeroVariance: resample.", registry=r
        )
        self.skipped_prompts = Counter(
            "agpo_skipped_prompts", "Prompts skipped for exceeding maxPromptTokens.", registry=r
        )
        # The latest evaluation (spec.evaluation); unset until the first one.
        self.eval_step = Gauge("agpo_eval_step", "Step of the latest evaluation.", registry=r)
        self.eval_accuracy = Gauge(
            "agpo_eval_accuracy", "Greedy accuracy on the evaluation prompts.", registry=r
        )
        self.eval_mean_at_k = Gauge(
            "agpo_eval_mean_at_k", "Mean accuracy of the k sampled evaluation answers.", registry=r
        )
        self.eval_pass_at_k = Gauge(
            "agpo_eval_pass_at_k",
            "Fraction of evaluation prompts with a correct answer among k samples.",
            registry=r,
        )
        self.eval_reasoning_tokens = Gauge(
            "agpo_eval_reasoning_tokens",
            "Mean tokens before the answer marker of correct greedy evaluation answers.",
            registry=r,
        )
        self.eval_duration = Gauge(
            "agpo_eval_duration_seconds", "Wall time of the latest evaluation.", registry=r
        )

    def record_step(self, s: StepStats) -> None:
        """Publish a finished step (each series set from the stats field of its name)."""
        r, u = s.rollout, s.update
        self.steps.inc()
        self.policy_version.set(s.policy_version)
        if s.batch_staleness is not None:
            self.batch_staleness.set(s.batch_staleness)
        self.reward_mean.set(r.reward_mean)
        self.reward_std.set(r.reward_std)
        self.accuracy.set(r.accuracy)
        self.zero_variance_fraction.set(r.zero_variance_fraction)
        self.completion_tokens_mean.set(r.completion_tokens_mean)
        self.completion_clipped_ratio.set(r.completion_clipped_ratio)
        self.loss.set(u.loss)
        self.kl.set(u.kl)
        self.entropy.set(u.entropy)
        self.clip_ratio.set(u.clip_ratio)
        self.grad_norm.set(u.grad_norm)
        self.learning_rate.set(u.learning_rate)
        self.step_duration.observe(s.step_seconds)
        self.rollout_duration.observe(r.rollout_seconds)
        self.rollout_tokens.inc(r.rollout_tokens)
        for name, value in r.reward_components.items():
            self.reward_component.labels(reward=name).set(value)

    def record_eval(self, e: EvalStats) -> None:
        """Publish an evaluation (a figure it has not, e.g. pass@k with k = 0, is left)."""
        self.eval_step.set(e.step)
        self.eval_accuracy.set(e.accuracy)
        if e.mean_at_k is not None:
            self.eval_mean_at_k.set(e.mean_at_k)
        if e.pass_at_k is not None:
            self.eval_pass_at_k.set(e.pass_at_k)
        if e.reasoning_tokens is not None:
            self.eval_reasoning_tokens.set(e.reasoning_tokens)
        self.eval_duration.set(e.seconds)


class StatusBoard:
    """The latest :class:`TrainerProgress`, what ``/status`` serves (thread-safe)."""

    def __init__(self, progress: TrainerProgress) -> None:
        self._lock = threading.Lock()
        self._progress = progress

    def update(self, progress: TrainerProgress) -> None:
        """Overwrite the fields ``progress`` sets; the others keep their values."""
        with self._lock:
            self._progress = self._progress.model_copy(
                update=progress.model_dump(exclude_unset=True)
            )

    def snapshot(self) -> dict[str, Any]:
        """The wire form: camelCase, unset fields left out."""
        with self._lock:
            return self._progress.to_wire()


def serve(
    metrics: TrainerMetrics, board: StatusBoard, port: int, host: str = "0.0.0.0"
) -> ThreadingHTTPServer:
    """Serve ``/metrics`` (Prometheus text) and ``/status`` (JSON) in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == METRICS_PATH:
                body, ctype = generate_latest(metrics.registry), CONTENT_TYPE_LATEST
            elif path == STATUS_PATH:
                body, ctype = json.dumps(board.snapshot()).encode(), "application/json"
            elif path in ("/healthz", "/health"):
                body, ctype = b"ok", "text/plain"
            else:
                self.send_error(404)
                return
            # A poller that gave up (agpo run stopping, a scrape timeout) closes early; that is
            # not an error worth a traceback in the trainer's log.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would flood the trainer log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
