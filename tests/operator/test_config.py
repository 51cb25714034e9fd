"""Configuration from the environment, and how it becomes kopf's run arguments."""

from __future__ import annotations

import pytest

from agpo_operator.__main__ import kopf_run_kwargs
from agpo_operator.config import ENV, Config, ConfigError


def test_defaults_serve_the_whole_cluster() -> None:
    config = Config.from_env({})
    assert config.clusterwide and config.namespaces == ()
    assert config.trainer_image.startswith("ghcr.io/agpo-dev/agpo-trainer:")
    assert kopf_run_kwargs(config) == {
        "clusterwide": True, "namespaces": [], "standalone": True,
        "liveness_endpoint": "http://0.0.0.0:8080/healthz",
    }  # fmt: skip


def test_every_variable_is_read() -> None:
    env = {
        "AGPO_WATCH_NAMESPACES": "b, a,,a",
        "AGPO_TRAINER_IMAGE": "t:1",
        "AGPO_ROLLOUT_IMAGE": "r:1",
        "AGPO_IMAGE_PULL_POLICY": "Always",
        "AGPO_HEALTH_PORT": "0",
        "AGPO_METRICS_PORT": "9999",
        "AGPO_PEERING": "agpo",
        "AGPO_PEERING_PRIORITY": "100",
        "AGPO_OPERATOR_NAMESPACE": "ops",
        "AGPO_MONITORING_NAMESPACE": "mon",
        "AGPO_EPHEMERAL_PORTS": "none",
        "AGPO_TRAINER_STATUS_URL": "http://{job}.{namespace}:{port}/s",
        "AGPO_STATUS_POLL_SECONDS": "2.5",
        "AGPO_RESYNC_SECONDS": "30",
        "AGPO_API_WORKERS": "4",
        "AGPO_API_TIMEOUT_SECONDS": "9",
    }
    assert set(env) == set(ENV)
    c = Config.from_env(env)
    assert c.namespaces == ("a", "b") and not c.clusterwide
    assert (c.trainer_image, c.rollout_image, c.image_pull_policy) == ("t:1", "r:1", "Always")
    assert (c.health_port, c.metrics_port, c.peering, c.peering_priority) == (0, 9999, "agpo", 100)
    assert (c.operator_namespace, c.monitoring_namespace, c.ephemeral_ports) == ("ops", "mon", None)
    assert c.status_url_for("j", "ns", 9400) == "http://j.ns:9400/s"
    assert (c.status_poll_seconds, c.resync_seconds, c.api_workers, c.api_timeout_seconds) == (
        2.5,
        30,
        4,
        9,
    )
    assert kopf_run_kwargs(c) == {
        "clusterwide": False, "namespaces": ["a", "b"], "standalone": False,
        "peering_name": "agpo", "priority": 100,
    }  # fmt: skip
    opts = c.build_options()
    assert (opts.trainer_image, opts.monitoring_namespace, opts.ephemeral_ports) == (
        "t:1",
        "mon",
        None,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AGPO_HEALTH_PORT", "http"),
        ("AGPO_METRICS_PORT", "70000"),
        ("AGPO_IMAGE_PULL_POLICY", "Sometimes"),
        ("AGPO_EPHEMERAL_PORTS", "5000"),
        ("AGPO_EPHEMERAL_PORTS", "6000-5000"),
        ("AGPO_STATUS_POLL_SECONDS", "0"),
        ("AGPO_API_WORKERS", "0"),
        ("AGPO_TRAINER_STATUS_URL", "http://{pod}/status"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


def test_main_refuses_a_bad_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agpo_operator.__main__ import main

    monkeypatch.setenv("AGPO_API_WORKERS", "many")
    assert main() == 2
    assert "AGPO_API_WORKERS" in capsys.readouterr().err
