"""The trainer's runtime settings: TrainerSettings plus torchrun's ranks, with the defaults
the trainer always had; and ``agpo run``'s environment, written by the same contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from agpo_api.env import TrainerSettings
from agpo_api.models import AGPOJob
from agpo_trainer.local.trainer_group import trainer_env
from agpo_trainer.runtime import ConfigError, Runtime


def job(**spec: object) -> AGPOJob:
    return AGPOJob.model_validate(
        {
            "apiVersion": "agpo.dev/v1alpha1",
            "kind": "AGPOJob",
            "metadata": {"name": "j"},
            "spec": {"model": {"name": "m"}, "dataset": {"source": {"builtin": {}}}, **spec},
        }
    )


def test_defaults() -> None:
    rt = Runtime.from_env(job(), {"AGPO_ROLLOUT_URLS": "http://a,http://b"})
    assert (rt.rank, rt.world_size, rt.local_rank) == (0, 1, 0)
    assert rt.rollout_urls == ["http://a", "http://b"]
    assert rt.rollout_token is None
    assert rt.checkpoint_dir == Path("runs/j/checkpoints")
    assert rt.metrics_port == 9400 and rt.weight_sync_port == 29600  # the spec's defaults
    assert rt.weight_sync_host is None and rt.base_dir is None and rt.max_steps is None
    assert rt.cache_dir == Path.home() / ".cache" / "agpo"
    assert (rt.micro_batch_size, rt.rollout_timeout_s, rt.crash_after_step) == (64, 300.0, None)
    assert (rt.model_path, rt.dataset_path) == (None, None)


def test_environment_overrides_and_zero_metrics_port_is_off() -> None:
    env = {
        "AGPO_ROLLOUT_URLS": "http://a",
        "AGPO_ROLLOUT_TOKEN": "t",
        "AGPO_METRICS_PORT": "0",
        "AGPO_WEIGHT_SYNC_PORT": "1234",
        "AGPO_MICRO_BATCH_SIZE": "8",
        "AGPO_ROLLOUT_TIMEOUT": "2.5",
        "AGPO_MAX_STEPS": "3",
        "AGPO_MODEL_PATH": "/models/x",
        "AGPO_DATASET_PATH": "/data/d.jsonl",
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
    }
    rt = Runtime.from_env(job(metrics={"port": 9500}), env)
    assert rt.metrics_port is None
    assert (rt.rank, rt.world_size, rt.local_rank, rt.is_main) == (1, 2, 1, False)
    assert (rt.rollout_token, rt.weight_sync_port, rt.micro_batch_size) == ("t", 1234, 8)
    assert (rt.rollout_timeout_s, rt.max_steps, rt.total_steps(10)) == (2.5, 3, 3)
    assert (rt.model_path, rt.dataset_path) == ("/models/x", "/data/d.jsonl")
    assert (
        Runtime.from_env(job(metrics={"port": 9500}), {"AGPO_ROLLOUT_URLS": "u"}).metrics_port
        == 9500
    )


def test_missing_urls_and_malformed_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="AGPO_ROLLOUT_URLS is empty"):
        Runtime.from_env(job(), {})
    with pytest.raises(ConfigError, match="AGPO_MICRO_BATCH_SIZE"):
        Runtime.from_env(job(), {"AGPO_ROLLOUT_URLS": "u", "AGPO_MICRO_BATCH_SIZE": "many"})


def test_agpo_run_env_is_what_the_trainer_parses(tmp_path: Path) -> None:
    env = trainer_env(
        urls=["http://a", "http://b"], token="tok", workdir=tmp_path, metrics_port=9401,
        sync_port=29601, steps=5, base_dir=tmp_path,
    )  # fmt: skip
    assert env["AGPO_ROLLOUT_URLS"] == "http://a,http://b" and env["PYTHONUNBUFFERED"] == "1"
    assert env["AGPO_CHECKPOINT_DIR"] == str(tmp_path / "checkpoints")
    s = TrainerSettings.from_env(env)
    assert (s.max_steps, s.metrics_port, s.weight_sync_port) == (5, 9401, 29601)
    rt = Runtime.from_env(job(), env)
    assert (rt.weight_sync_host, rt.base_dir, rt.rollout_token) == ("127.0.0.1", tmp_path, "tok")
    assert "AGPO_MAX_STEPS" not in trainer_env(
        urls=["u"], token="", workdir=tmp_path, metrics_port=1, sync_port=2, steps=None,
        base_dir=tmp_path,
    )  # fmt: skip
