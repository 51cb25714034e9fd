"""Shared fixtures: repository paths and minimal AGPOJob documents."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

# Tests never reach a model hub (there is none here); fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

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
