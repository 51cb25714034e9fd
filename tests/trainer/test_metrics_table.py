"""The metrics table end to end: every figure the loss computes is a row; every row reaches the
places the naming scheme says (the step/eval log lines and /status in camelCase, Prometheus as
``agpo_<field>``), taken from a real loss computation through the trainer's own
``UpdateStats``, ``TrainerMetrics`` and ``StatusBoard``."""

from __future__ import annotations

import json
import re

import pytest
import torch
from prometheus_client import generate_latest
from pydantic.alias_generators import to_camel

from agpo_api.metrics_table import METRICS, rows
from agpo_api.models import RolloutCorrectionSpec
from agpo_api.progress import TrainerProgress
from agpo_api.records import figures
from agpo_trainer.algorithms import PolicyLossConfig, compute_policy_loss
from agpo_trainer.metrics import StatusBoard, TrainerMetrics
from agpo_trainer.stats import EvalStats, RolloutStats, StepStats, UpdateStats, combine_steps


def loss_figures(loss_type: str = "clipped") -> dict[str, float]:
    """What ``compute_policy_loss`` reports with every optional input given."""
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 5, generator=g, dtype=torch.float64)
    logp = (old + 0.3 * torch.randn(4, 5, generator=g, dtype=torch.float64)).requires_grad_()
    _, figures = compute_policy_loss(
        logp, old, torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64),
        torch.ones(4, 5, dtype=torch.bool), ref_logprobs=old, kl_coef=0.1,
        entropy=torch.rand(4, 5, generator=g, dtype=torch.float64), loss_type=loss_type,
        aggregation="seq-mean-token-sum" if loss_type == "gvpo" else "token-mean",
        config=PolicyLossConfig(group_size=2),
        rollout_logprobs=old + 0.01, correction=RolloutCorrectionSpec(mode="tis"),
    )  # fmt: skip
    return figures


def step_stats(update: UpdateStats) -> StepStats:
    rollout = RolloutStats(
        reward_mean=0.5, reward_std=0.1, accuracy=0.25, zero_variance_fraction=0.125,
        completion_tokens_mean=2.0, completion_clipped_ratio=0.0, rollout_tokens=64.0,
        resample_rounds=0.0, rollout_seconds=1.5, reward_seconds=0.25,
        reward_component_mean={"accuracy": 0.25, "length": 0.01},
        correct_completion_tokens_mean=3.0, correct_reasoning_tokens_mean=1.0,
        all_correct_fraction=0.25, all_wrong_fraction=0.125,
    )  # fmt: skip
    return StepStats(
        step=3, total_steps=80, policy_version=3, rollout=rollout, update=update,
        step_seconds=2.0, train_seconds=0.25, weight_sync_seconds=0.125, prompts=[4, 1],
        rollout_policy_version=2, batch_staleness=1, rollout_servers=2, serving_servers=1,
        lagging_servers=["http://10.0.0.2:8000"],
    )  # fmt: skip


EVAL = EvalStats(step=3, policy_version=3, prompts=8, accuracy=0.5, samples=2, mean_at_k=0.25,
                 pass_at_k=0.5, reasoning_tokens=3.0, seconds=1.0)  # fmt: skip


def test_the_naming_scheme() -> None:
    for m in METRICS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", m.field), m.field
        assert m.wire == to_camel(m.field)
        if m.kind == "histogram" and m.field.endswith("_seconds"):
            assert m.series == f"agpo_{m.field.removesuffix('_seconds')}_duration_seconds"
        else:
            assert m.series == f"agpo_{m.field}"
    assert len({m.field for m in METRICS}) == len(METRICS)


@pytest.mark.parametrize("loss_type", ["clipped", "gvpo"])
def test_every_figure_the_loss_computes_is_a_row_and_reaches_update_stats(loss_type: str) -> None:
    figures = loss_figures(loss_type)
    update_rows = {m.field for m in rows("update")}
    assert set(figures) <= update_rows, set(figures) - update_rows  # nothing computed, dropped
    update = UpdateStats.from_loss_metrics(
        combine_steps([figures, figures]), grad_norm=1.0, learning_rate=1e-3
    )
    for name, value in figures.items():
        assert getattr(update, name) == pytest.approx(value), name
    assert (update.gvpo_mse is not None) == (loss_type == "gvpo")


def test_every_row_reaches_the_log_line_status_and_prometheus() -> None:
    update = UpdateStats.from_loss_metrics(loss_figures(), grad_norm=1.0, learning_rate=1e-3)
    step = step_stats(update)
    metrics, board = TrainerMetrics(), StatusBoard(TrainerProgress(phase="Running"))
    metrics.record_step(step)
    metrics.record_eval(EVAL)
    for m in rows("event"):  # figures reported where they happen (a push, a skipped prompt)
        metrics.add(m.field, 1.0, label="mlflow" if m.labels else None)
    metrics.add("weight_sync_seconds", 0.5)
    board.update(step.progress())
    board.update(EVAL.progress())
    text = generate_latest(metrics.registry).decode()
    exported = set(
        re.findall(r"^(agpo_[a-z0-9_]+?)(?:_total|_bucket|_count|_sum)?[ {]", text, re.M)
    )
    line = json.loads(step.log_line().removeprefix("step "))
    snapshot = board.snapshot()
    for m in METRICS:
        assert (m.series in exported) == m.prometheus, m.field
        if m.status and m.source in ("step", "rollout", "update"):
            assert line[m.wire] == step.value(m), m.field
        if m.status:
            assert m.wire in snapshot, m.field
        else:
            assert m.wire not in snapshot, m.field
    assert 'agpo_reward_component_mean{reward="length"} 0.01' in text
    assert snapshot["laggingServers"] == line["laggingServers"] == ["http://10.0.0.2:8000"]
    assert list(line)[-1] == "prompts"


def test_every_row_reaches_the_records() -> None:
    """The records file (agpo report, the trackers) holds every step and eval row, status
    or not, by its wire name; the trackers' flat figures are those values."""
    step = step_stats(UpdateStats.from_loss_metrics(loss_figures(), grad_norm=1.0,
                                                    learning_rate=1e-3))  # fmt: skip
    record, evaluation = step.record(), EVAL.record()
    for m in rows("step", "rollout", "update"):
        assert record[m.wire] == step.value(m), m.field
    for m in rows("eval"):
        assert evaluation[m.wire] == EVAL.value(m), m.field
    assert record["prompts"] == [4, 1] and evaluation["step"] == 3
    flat = figures("step", record)
    assert flat["rewardComponentMean/length"] == 0.01 and flat["learningRate"] == 1e-3
    assert "prompts" not in flat and "step" not in flat
    assert figures("eval", evaluation)["evalPolicyVersion"] == 3.0  # never a step's name


def test_typed_status_fields_are_rows_of_the_table() -> None:
    status = {m.field for m in METRICS if m.status}
    typed = set(TrainerProgress.model_fields) - {"phase", "prompts", "lagging_servers"}
    assert typed <= status  # no typed field without its row
    # a status row without a typed field (none today) is served all the same, as an extra
    extra = TrainerProgress(step=1, some_new_figure=2.0).to_wire()
    assert extra == {"step": 1, "someNewFigure": 2.0}
