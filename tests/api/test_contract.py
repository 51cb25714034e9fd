"""The cross-component contract in agpo_api: env, /status schema, vocabulary, vLLM command."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agpo_api.crd import crd
from agpo_api.env import AUTH_ENV, EnvError, EnvVar, TrainerSettings
from agpo_api.progress import CR_STATUS_FIELDS, TrainerProgress, cr_status_values, wire_name
from agpo_api.vllm_server import build_server_env, server_env
from agpo_api.vocabulary import ConditionType, Phase

texts = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/:._-", min_size=1, max_size=20)


@given(
    urls=st.lists(texts, min_size=1, max_size=3),
    port=st.none() | st.integers(0, 65535),
    timeout=st.none() | st.floats(0.5, 1e4, allow_nan=False),
    steps=st.none() | st.integers(1, 10**6),
    token=st.none() | texts,
)
def test_trainer_settings_round_trip_through_the_environment(
    urls: list[str], port: int | None, timeout: float | None, steps: int | None, token: str | None
) -> None:
    settings = TrainerSettings(
        rollout_urls=tuple(urls),
        metrics_port=port,
        rollout_timeout_s=timeout,
        max_steps=steps,
        rollout_token=token,
    )
    env = settings.to_env()
    assert all(type(k) is str and type(v) is str for k, v in env.items())
    assert TrainerSettings.from_env(env) == settings


def test_every_setting_has_its_own_variable() -> None:
    names = [f.metadata["env"] for f in dataclasses.fields(TrainerSettings)]
    assert len(names) == len(set(names))
    assert all(isinstance(n, EnvVar) for n in names)


def test_unset_and_empty_variables_are_none() -> None:
    settings = TrainerSettings.from_env({"AGPO_METRICS_PORT": "", "UNRELATED": "x"})
    assert settings == TrainerSettings()


def test_a_malformed_variable_is_named() -> None:
    with pytest.raises(EnvError, match=r"AGPO_WEIGHT_SYNC_PORT='http' is not a valid int"):
        TrainerSettings.from_env({"AGPO_WEIGHT_SYNC_PORT": "http"})


def test_status_fields_copied_into_the_cr_exist_in_both_schemas() -> None:
    status_schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    cr_fields = status_schema["status"]["properties"]
    for field in CR_STATUS_FIELDS:
        assert field in TrainerProgress.model_fields
        assert wire_name(field) in cr_fields


def test_cr_status_values_keep_well_typed_fields_only() -> None:
    served = TrainerProgress(step=3, total_steps=80, reward_mean=0.5, accuracy=0.4).to_wire()
    served["policyVersion"] = True  # a bool is not a version
    served["zeroVarianceFraction"] = "half"
    assert cr_status_values(served) == {"step": 3, "totalSteps": 80, "rewardMean": 0.5}
    assert cr_status_values(None) == {}


def test_the_crd_phase_enum_is_the_vocabulary() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["status"]["properties"]["phase"]["enum"] == [p.value for p in Phase]
    assert [c.value for c in ConditionType][:2] == ["Created", "RolloutReady"]


def test_local_server_env_is_the_pod_env_plus_the_token() -> None:
    pod = server_env(cpu=True, allow_metrics_without_token=True)
    local = build_server_env(token="t0k", device="cpu", allow_metrics_without_token=True)
    assert pod.items() <= local.items()
    assert local[EnvVar.ROLLOUT_TOKEN] == "t0k"
    assert set(local) - set(pod) == {"PYTHONUNBUFFERED", EnvVar.ROLLOUT_TOKEN}
    assert {EnvVar.ROLLOUT_TOKEN, EnvVar.ROLLOUT_AUTH} <= AUTH_ENV
