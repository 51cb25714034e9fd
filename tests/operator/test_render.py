"""``agpo render``: the operator's builders as YAML, valid against the Kubernetes OpenAPI schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.version import Version

from agpo_api import load_job
from agpo_cli.main import main
from agpo_operator.builders import build_children
from agpo_operator.config import Config
from agpo_operator.render import render_yaml

from operator_support import SAMPLES

SAMPLE_FILES = sorted(SAMPLES.glob("*.yaml"))
# The newest bundled Kubernetes 1.3x schema.
K8S_VERSION = max(
    (v for v in kubernetes_validate.utils.all_versions() if v.startswith("1.3")), key=Version
)

# The fields of the Prometheus Operator's PodMonitor we produce (monitoring.coreos.com/v1);
# kubernetes-validate has no schema for this CRD.
PODMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "podMetricsEndpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def rendered(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["render", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_every_rendered_object_validates_strictly(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = rendered(str(path), capsys=capsys)
    assert code == 0, err
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert len(docs) >= 10
    for doc in docs:
        if doc["kind"] == "PodMonitor":
            jsonschema.validate(doc, PODMONITOR_SCHEMA)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:  # pragma: no cover - the failure message
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}"
            )


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_render_prints_what_the_operator_builds(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = rendered(str(path), "-n", "elsewhere", capsys=capsys)
    docs = [d for d in yaml.safe_load_all(out) if d]
    job = load_job(path)
    assert docs == build_children(job, "elsewhere", Config.from_env().build_options())
    assert {d["metadata"]["namespace"] for d in docs} == {"elsewhere"}
    assert all("ownerReferences" not in d["metadata"] for d in docs)
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert "data" not in secret and "stringData" not in secret
    assert out.startswith("# AGPOJob elsewhere/")


def test_namespace_defaults_to_the_jobs_own(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = rendered(
        str(SAMPLES / "qwen-math-gpu.yaml"), str(SAMPLES / "tiny-cpu.yaml"), capsys=capsys
    )
    namespaces = {(d["metadata"]["labels"]["agpo.dev/job"], d["metadata"]["namespace"])
                  for d in yaml.safe_load_all(out) if d}  # fmt: skip
    assert namespaces == {("qwen-math-agpo", "ml-training"), ("tiny-cpu", "default")}


def test_images_follow_the_operator_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGPO_TRAINER_IMAGE", "registry.local/trainer:9")
    job = load_job(SAMPLES / "tiny-cpu.yaml").model_copy(deep=True)
    job.spec.trainer.image = None
    docs: list[dict[str, Any]] = list(yaml.safe_load_all(render_yaml([job])))
    (tj,) = [d for d in docs if d and d["kind"] == "Job"]
    assert tj["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/trainer:9"


def test_an_invalid_file_is_refused_with_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load((SAMPLES / "tiny-cpu.yaml").read_text())
    doc["spec"]["training"]["warmupSteps"] = 5000  # more LR warm-up steps than steps
    bad.write_text(yaml.safe_dump(doc))
    code, out, err = rendered(str(bad), capsys=capsys)
    assert code == 2 and out == "" and "warmupSteps" in err
