"""The API helpers: REST paths, label filtering, credentials shared by kopf and our client."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agpo_operator import kube
from agpo_operator.builders.child import AGPOJOB, POD
from agpo_operator.builders.trainer import TRAINER_JOB


def test_paths() -> None:
    assert kube.path(POD, "ns") == "/api/v1/namespaces/ns/pods"
    assert kube.path(TRAINER_JOB.kind, "ns", "j") == "/apis/batch/v1/namespaces/ns/jobs/j"
    assert (
        kube.path(AGPOJOB, "ns", "x", "status")
        == "/apis/agpo.dev/v1alpha1/namespaces/ns/agpojobs/x/status"
    )


def test_label_filter_is_exact() -> None:
    assert kube.matches({"a": "1", "b": "2"}, {"a": "1"})
    assert not kube.matches({"a": "10"}, {"a": "1"})
    assert not kube.matches(None, {"a": "1"})


def test_login_reads_kubeconfig_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "kc"
    cfg.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://k8s.example:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "abc"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    configuration = kube.load_configuration()
    info = kube.connection_info(configuration)
    assert info.server == "https://k8s.example:6443"
    assert (info.scheme, info.token, info.insecure) == ("Bearer", "abc", True)
