"""MLflow (``spec.tracking.mlflow``): one MLflow run per trainer start, its params the resolved
spec flattened, its metrics every step and evaluation figure at the record's step. The client
of ``mlflow-skinny`` (the ``agpo[mlflow]`` extra), through :class:`mlflow.MlflowClient`: no
global active run, so nothing else in the process is touched."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from agpo_api.models import MlflowSpec
from agpo_api.records import Kind, figures, flat_params

#: A server that is down must not hold the records for minutes: MLflow's client retries
#: seven times with a doubling backoff by default (about two minutes per call).
_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
#: MLflow's limits per log_batch call (mlflow.utils.validation).
_PARAMS_PER_CALL, _METRICS_PER_CALL, _PARAM_LENGTH = 100, 1000, 6000


class MlflowTracker:
    name = "mlflow"

    def __init__(self, spec: MlflowSpec, job: str) -> None:
        self.spec, self.job = spec, job
        self.run_id: str | None = None

    def start(self, header: dict[str, Any]) -> None:
        for key, value in _CLIENT_ENV.items():
            os.environ.setdefault(key, value)  # the user's setting wins
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=self.spec.tracking_uri)
        found = self.client.get_experiment_by_name(self.spec.experiment)
        experiment = (
            found.experiment_id if found else self.client.create_experiment(self.spec.experiment)
        )
        run = self.client.create_run(
            experiment, run_name=self.spec.run_name or self.job, tags={"agpo.job": self.job}
        )
        self.run_id = run.info.run_id
        params = flat_params(
            {"spec": header.get("spec", {}), "versions": header.get("versions", {})}
        )
        items = [Param(k, v[:_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), _PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i : i + _PARAMS_PER_CALL])

    def log(self, kind: Kind, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        assert self.run_id is not None  # the forwarder calls log only after start
        now = int(time.time() * 1000)
        items = [Metric(k, v, now, record["step"]) for k, v in figures(kind, record).items()]
        for i in range(0, len(items), _METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=items[i : i + _METRICS_PER_CALL])

    def finish(self, checkpoint: Path | None) -> None:
        assert self.run_id is not None
        if self.spec.log_checkpoint and checkpoint is not None:
            self.client.log_artifacts(self.run_id, str(checkpoint), f"checkpoint/{checkpoint.name}")
        self.client.set_terminated(self.run_id)
