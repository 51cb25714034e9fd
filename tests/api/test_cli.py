"""`agpo crd` and `agpo validate`: exit codes and one-line messages, run as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agpo_api.crd import crd_yaml

from agpo_testlib import ROOT, SAMPLES
from cases import apply


def agpo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agpo_cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def write(tmp_path: Path, name: str, doc: Any) -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def test_crd_prints_the_generated_crd() -> None:
    out = agpo("crd")
    assert out.returncode == 0
    assert out.stdout == crd_yaml()


def test_validate_samples_exit_0() -> None:
    out = agpo("validate", *map(str, SAMPLES))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"spec.algorithm.groupSzie": 4}, "spec.algorithm.groupSzie"),
        ({"spec.algorithm.groupSize": -2}, "spec.algorithm.groupSize"),
        ({"spec.training.learningRate": "0.001"}, "spec.training.learningRate"),
        ({"spec.algorithm.clip": {"low": 0.3, "high": 0.2}}, "spec.algorithm.clip.high"),
    ],
    ids=["misspelled", "negative-groupSize", "string-lr", "clip-high-below-low"],
)
def test_validate_bad_spec_exit_2_with_one_line_naming_the_field(
    tmp_path: Path, patch: dict[str, Any], field: str
) -> None:
    path = write(tmp_path, "job.yaml", apply(patch))
    out = agpo("validate", str(path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"{path}: {field}: ")
    assert "Traceback" not in out.stderr


def test_validate_reports_every_problem_of_every_file(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", apply({}))
    bad = write(
        tmp_path, "bad.yaml", apply({"spec.algorithm.groupSize": 1, "spec.training.topP": 2.0})
    )
    out = agpo("validate", str(good), str(bad))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert sorted(lines) == sorted(
        [
            f"{bad}: spec.algorithm.groupSize: input should be greater than or equal to 2, got 1",
            f"{bad}: spec.training.topP: input should be less than or equal to 1, got 2.0",
        ]
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spec: [unclosed", "malformed YAML: line 1"),
        ("", "no AGPOJob document in the file"),
        ("apiVersion: v1\nkind: Pod\n", "apiVersion: must be agpo.dev/v1alpha1"),
        ("- a\n- b\n", "expected a mapping"),
    ],
    ids=["malformed", "empty", "wrong-kind", "list"],
)
def test_validate_malformed_input(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "x.yaml", text)
    out = agpo("validate", str(path))
    assert out.returncode == 2
    assert expected in out.stderr
    assert "Traceback" not in out.stderr


def test_validate_missing_file(tmp_path: Path) -> None:
    out = agpo("validate", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2
    assert "cannot read file" in out.stderr


def test_validate_multi_document_file_names_the_document(tmp_path: Path) -> None:
    text = yaml.safe_dump(apply({})) + "---\n" + yaml.safe_dump(apply({"spec.rollout.replicas": 0}))
    path = write(tmp_path, "two.yaml", text)
    out = agpo("validate", str(path))
    assert out.returncode == 2
    assert out.stderr.startswith(f"{path}[1]: spec.rollout.replicas: ")
