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


def job_doc(patch: dict[str, Any] | None = None) -> dict[str, Any]:
    """The minimal job with dotted-path values set (``{"spec.algorithm.preset": "grpo"}``)."""
    doc = copy.deepcopy(MINIMAL)
    for dotted, value in (patch or {}).items():
        node = doc
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return doc


def resolved_spec(patch: dict[str, Any] | None = None) -> Any:
    """The resolved spec (``agpo_api.resolved``) of :func:`job_doc` -- what the trainer reads."""
    from agpo_api import parse_job
    from agpo_api.resolved import resolve

    return resolve(parse_job(job_doc(patch)).spec)
