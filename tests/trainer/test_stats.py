"""Typed step statistics: the ``step {...}`` log line and ``/status`` keep their camelCase
names and order, and Prometheus series are set from the fields of the same names."""

from __future__ import annotations

import json

from prometheus_client import generate_latest

from agpo_api.progress import TrainerProgress
from agpo_trainer.metrics import StatusBoard, TrainerMetrics
from agpo_trainer.stats import RolloutStats, StepStats, UpdateStats

#: The log line's keys before the refactor, in order.
LOG_KEYS = [
    "step", "totalSteps", "policyVersion", "rewardMean", "accuracy", "completionTokensMean",
    "zeroVarianceFraction", "allCorrectFraction", "allWrongFraction", "resampleRounds", "loss", "ratioMean", "kl", "entropy", "clipRatio",
    "clipRatioLow", "clipRatioHigh", "gradNorm", "stepSeconds", "rolloutSeconds", "rewardSeconds", "trainSeconds",
    "weightSyncSeconds", "prompts",
]  # fmt: skip


def stats() -> StepStats:
    rollout = RolloutStats(
        reward_mean=0.5, reward_std=0.1, accuracy=0.25, zero_variance_fraction=0.125,
        completion_tokens_mean=2.0, completion_clipped_ratio=0.0, rollout_tokens=64.0,
        resample_rounds=0.0, rollout_seconds=1.5, reward_seconds=0.25,
        reward_component_mean={"accuracy": 0.25},
    )  # fmt: skip
    update = UpdateStats.from_loss_metrics(
        {"loss": 0.75, "ratio_mean": 1.0, "clip_ratio_low": 0.5, "clip_ratio_high": 0.25},
        grad_norm=2.0,
        learning_rate=1e-3,
    )
    return StepStats(
        step=3, total_steps=80, policy_version=3, rollout=rollout, update=update,
        step_seconds=2.0, train_seconds=0.25, weight_sync_seconds=0.125, prompts=[4, 1],
    )  # fmt: skip


def test_log_line_keys_and_values() -> None:
    line = stats().log_line()
    assert line.startswith("step {")
    record = json.loads(line[len("step ") :])
    assert list(record) == LOG_KEYS
    assert record["clipRatio"] == 0.75 and record["kl"] == 0.0 and record["prompts"] == [4, 1]


def test_status_board_merges_steps_into_the_phase() -> None:
    board = StatusBoard(TrainerProgress(phase="Initializing", step=0, total_steps=80))
    board.update(TrainerProgress(phase="Running", policy_version=0))
    board.update(stats().progress())
    snap = board.snapshot()
    assert snap["phase"] == "Running" and snap["step"] == 3 and snap["totalSteps"] == 80
    assert set(LOG_KEYS) <= set(snap)
    board.update(TrainerProgress(phase="Succeeded"))
    assert board.snapshot()["phase"] == "Succeeded" and board.snapshot()["rewardMean"] == 0.5


def test_prometheus_series() -> None:
    m = TrainerMetrics()
    m.record_step(stats())
    text = generate_latest(m.registry).decode()
    for line in (
        "agpo_reward_mean 0.5",
        "agpo_zero_variance_fraction 0.125",
        "agpo_completion_tokens_mean 2.0",
        "agpo_clip_ratio 0.75",
        'agpo_reward_component_mean{reward="accuracy"} 0.25',
        "agpo_steps_total 1.0",
        "agpo_rollout_tokens_total 64.0",
    ):
        assert line in text
