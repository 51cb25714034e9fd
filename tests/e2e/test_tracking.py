"""Experiment trackers end to end (issue #22): a real torchrun trainer group against a real vLLM
server feeds a real MLflow server (the ``mlflow`` package's, on loopback), TensorBoard event
files and a W&B offline run; each is read back with its own reader and compared with the
trainer's records file. A tracker that cannot be reached (a closed port) costs the run nothing:
it finishes, a warning names the tracker, and the dropped records are counted in Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from wandb_log import wandb_records

from agpo_api.records import RunRecords, figures, find_records, flat_params, read_records
from agpo_trainer.rollout.server import VLLMServer, free_port

from e2e_support import job_file, kill_group, launch_trainer, wait_for

pytestmark = [pytest.mark.e2e]

STEPS = 4
EVALUATION = {"everySteps": 2, "prompts": 16, "samples": 2, "source": {"fraction": 0.1}}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, its store in a temporary directory."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
        "--port", str(port), "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            return requests.get(f"{url}/health", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_for(healthy, 180, "the MLflow server")
        yield url
    finally:
        kill_group(proc)


@pytest.fixture(scope="module")
def tracked(
    mlflow_server: str,
    vllm_server: VLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
    cache_dir: Path,
) -> tuple[Path, RunRecords]:
    """One tracked run of the tiny job: its checkpoint directory and its records."""
    tmp = tmp_path_factory.mktemp("tracked")
    tracking = {
        "mlflow": {"trackingUri": mlflow_server, "experiment": "e2e", "logCheckpoint": True},
        "tensorboard": {},
        "wandb": {"project": "agpo-e2e", "mode": "offline"},
    }
    job = job_file(tmp, tracking=tracking, evaluation=EVALUATION, training__steps=STEPS)
    run = launch_trainer(job, [vllm_server.url], vllm_server.token, tmp / "run")
    try:
        assert run.wait(300) == 0, run.text()[-3000:]
    finally:
        kill_group(run.process)
    assert "tracker" not in run.text(), run.text()[-3000:]  # no tracker warned
    checkpoints = tmp / "run" / "checkpoints"
    return checkpoints, read_records(find_records(checkpoints))


def expected_series(records: RunRecords) -> dict[str, list[tuple[int, float]]]:
    """Every figure of the records as ``name -> [(step, value), ...]``, steps then evals."""
    series: dict[str, list[tuple[int, float]]] = {}
    for kind, recs in (("step", records.steps), ("eval", records.evals)):
        for r in recs:
            for name, value in figures(kind, r).items():  # type: ignore[arg-type]
                series.setdefault(name, []).append((r["step"], value))
    return series


def mlflow_get(url: str, endpoint: str, **params: Any) -> Any:
    r = requests.get(f"{url}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
    r.raise_for_status()
    return r.json()


def test_mlflow_run_holds_the_records_params_and_metrics(
    mlflow_server: str, tracked: tuple[Path, RunRecords]
) -> None:
    _, records = tracked
    assert len(records.steps) == STEPS and len(records.evals) == 3  # start, step 2, step 4
    experiment = mlflow_get(mlflow_server, "experiments/get-by-name", experiment_name="e2e")
    found = requests.post(
        f"{mlflow_server}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [experiment["experiment"]["experiment_id"]]},
        timeout=30,
    ).json()["runs"]
    assert len(found) == 1
    run = found[0]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "e2e"
    run_id = run["info"]["run_id"]

    assert records.run is not None
    want = flat_params({"spec": records.run["spec"], "versions": records.run["versions"]})
    got = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert got == want

    series = expected_series(records)
    assert {m["key"] for m in run["data"]["metrics"]} == set(series)
    for name, points in series.items():
        history = mlflow_get(mlflow_server, "metrics/get-history", run_id=run_id, metric_key=name)
        logged = sorted((m["step"], m["value"]) for m in history["metrics"])
        assert logged == sorted(points), name

    # logCheckpoint: the final checkpoint is the run's artifact
    listed = mlflow_get(mlflow_server, "artifacts/list", run_id=run_id, path="checkpoint")
    assert [f["path"] for f in listed["files"]] == [f"checkpoint/step-{STEPS:06d}"]


def test_tensorboard_event_files_hold_every_figure(tracked: tuple[Path, RunRecords]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    checkpoints, records = tracked
    events = EventAccumulator(str(checkpoints / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    series = expected_series(records)
    assert set(events.Tags()["scalars"]) == set(series)
    for name, points in series.items():
        logged = [(e.step, e.value) for e in events.Scalars(name)]
        # TensorBoard keeps float32 scalars
        assert logged == [(s, float(np.float32(v))) for s, v in points], name
    [run_text] = events.Tags()["tensors"]  # the run header as a text summary
    assert run_text.startswith("run")


def test_wandb_offline_run_holds_the_config_and_history(
    tracked: tuple[Path, RunRecords],
) -> None:
    from wandb.proto import wandb_internal_pb2 as pb

    checkpoints, records = tracked
    [path] = (checkpoints / "wandb").glob("offline-run-*/run-*.wandb")
    history: dict[int, dict[str, Any]] = {}
    config: dict[str, Any] = {}
    for data in wandb_records(path):
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
            assert record.run.project == "agpo-e2e" and record.run.display_name == "e2e"
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item}  # fmt: skip
            history.setdefault(items.pop("_step"), {}).update(items)
    assert records.run is not None and config["spec"] == records.run["spec"]
    for name, points in expected_series(records).items():
        assert [(s, history[s][name]) for s, _ in points] == points, name


def test_an_unreachable_tracker_costs_the_run_nothing(
    vllm_server: VLLMServer, tmp_path: Path, start_trainer: Any
) -> None:
    """MLflow at a closed port: the run finishes, a warning names the tracker, and the
    dropped records are counted in Prometheus while the run goes on."""
    closed = f"http://127.0.0.1:{free_port()}"
    job = job_file(tmp_path, tracking={"mlflow": {"trackingUri": closed}}, training__steps=12)
    run = start_trainer(job, [vllm_server.url], vllm_server.token, tmp_path / "run")

    def dropped() -> float | None:
        if run.process.poll() is not None:
            pytest.fail(f"the run ended before the drops were exported: {run.text()[-3000:]}")
        try:
            text = requests.get(f"http://127.0.0.1:{run.metrics_port}/metrics", timeout=2).text
        except requests.RequestException:
            return None
        found = re.search(r'^agpo_tracker_dropped_total\{tracker="mlflow"\} (\S+)', text, re.M)
        return float(found.group(1)) if found and float(found.group(1)) > 0 else None

    assert wait_for(dropped, 240, "agpo_tracker_dropped_total{tracker=mlflow} > 0") >= 1
    assert run.wait(300) == 0, run.text()[-3000:]
    warnings = [ln for ln in run.text().splitlines() if "tracker mlflow" in ln]
    assert warnings and "start failed" in warnings[0], run.text()[-3000:]
    assert "Traceback" not in run.text()
    assert len(read_records(find_records(tmp_path / "run")).steps) == 12  # nothing lost
