"""``spec.tracking``: experiment trackers the trainer's rank 0 forwards its records to.

Each tracker is optional and needs its extra in the trainer image (``agpo[mlflow]``,
``agpo[tensorboard]``, ``agpo[wandb]``). They receive what ``records.jsonl`` holds
(:mod:`agpo_api.records`): the resolved spec as the run's params, every step and evaluation
figure as metrics. A tracker is fed from a bounded queue by a background thread, so one that is
down or slow never fails or slows the run: its records are dropped, counted
(``agpo_tracker_dropped_total{tracker}``) and warned about. Credentials reach the pods only
through ``secretKeyRef`` (as the environment variables the libraries read themselves).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agpo_api.base import ApiModel
from agpo_api.models.common import PositiveInt, SecretKeyRef

#: Records a tracker may have waiting before new ones are dropped.
DEFAULT_QUEUE = 1000


class MlflowSpec(ApiModel):
    """An MLflow tracking server: one MLflow run per trainer start, under ``experiment``."""

    tracking_uri: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^(https?|file)://",
        description="The tracking server (http://mlflow.mlflow:5000), or a file:// store.",
    )
    experiment: str = Field(
        default="agpo", min_length=1, max_length=256, description="The MLflow experiment."
    )
    run_name: str | None = Field(
        default=None, max_length=256, description="The MLflow run's name; default: the job's."
    )
    log_checkpoint: bool = Field(
        default=False,
        description="At the end, upload the final checkpoint as the run's artifact (its size "
        "in the artifact store: the model's weights and the optimizer state).",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a bearer token for the server (MLFLOW_TRACKING_TOKEN).",
    )


class TensorBoardSpec(ApiModel):
    """TensorBoard event files under the checkpoint volume."""

    subdirectory: str = Field(
        default="tensorboard",
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
        description="Where the event files go, relative to the checkpoint directory "
        "(/checkpoints in the pods; <workdir>/checkpoints with agpo run).",
    )


class WandbSpec(ApiModel):
    """Weights & Biases: online with an API key, or offline files to ``wandb sync`` later."""

    project: str = Field(min_length=1, max_length=128, description="The W&B project.")
    entity: str | None = Field(
        default=None, max_length=128, description="The W&B entity (user or team)."
    )
    mode: Literal["online", "offline"] = Field(
        default="online",
        description="online: to the W&B server (needs the API key); offline: run files under "
        "the checkpoint directory's wandb/ for `wandb sync`.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the W&B API key (WANDB_API_KEY); needed online in pods "
        "(agpo run reads WANDB_API_KEY from its environment).",
    )


class TrackingSpec(ApiModel):
    """Experiment trackers (each optional); rank 0 forwards every record to each."""

    mlflow: MlflowSpec | None = Field(default=None, description="MLflow tracking.")
    tensorboard: TensorBoardSpec | None = Field(
        default=None, description="TensorBoard event files."
    )
    wandb: WandbSpec | None = Field(default=None, description="Weights & Biases.")
    queue_size: PositiveInt = Field(
        default=DEFAULT_QUEUE,
        le=100_000,
        description="Records a tracker may have waiting; beyond that new ones are dropped "
        "(and counted) rather than slow the run.",
    )

    @property
    def trackers(self) -> tuple[Literal["mlflow", "tensorboard", "wandb"], ...]:
        """The names of the trackers that are on, in a fixed order."""
        on = {"mlflow": self.mlflow, "tensorboard": self.tensorboard, "wandb": self.wandb}
        return tuple(name for name, spec in on.items() if spec is not None)  # type: ignore[misc]
