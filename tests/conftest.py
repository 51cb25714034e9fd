"""Shared fixtures: repository paths and minimal AGPOJob documents."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))

MINIMAL: dict[str, Any] = {
    "apiVersion": "agpo.dev/v1alpha1",
    "kind": "AGPOJob",
    "metadata": {"name": "minimal"},
    "spec": {
        "model": {"name": "builtin:tiny"},
        "dataset": {"source": {"builtin": {}}},
    },
}


@pytest.fixture
def minimal_job() -> dict[str, Any]:
    """A fresh copy of the smallest valid AGPOJob document."""
    return copy.deepcopy(MINIMAL)
