"""Ports and paths that two components must agree on (the operator's pod specs, the trainer,
the vLLM servers, ``agpo run``)."""

from __future__ import annotations

#: vLLM's OpenAI server in rollout pods (and the default of local servers).
ROLLOUT_PORT = 8000
#: torchrun's rendezvous (Kubeflow's PET_MASTER_PORT default).
RENDEZVOUS_PORT = 29500
#: The weight-transfer rendezvous the trainer hosts when the spec names none.
WEIGHT_SYNC_PORT = 29600
#: nccl: server i of the pool rendezvouses on ``weightSync.port + i`` (vLLM's engine hosts a
#: store per group; the trainer gives a joining server the lowest index free). The trainer's
#: NetworkPolicy admits this whole block, so the pool can be scaled without a new policy, and
#: an nccl job has at most this many servers.
NCCL_SYNC_PORTS = 64

#: The resolved AGPOJob, mounted from the job's ConfigMap into every pod.
JOB_FILE_DIR = "/etc/agpo"
JOB_FILE_KEY = "job.yaml"
JOB_FILE = f"{JOB_FILE_DIR}/{JOB_FILE_KEY}"
#: Model weights from a PVC (``spec.model.source.pvc``).
MODELS_DIR = "/models"
#: ``builtin:tiny``, built by an init container into an emptyDir.
TINY_MODEL_DIR = "/model"
#: A GGUF file (a packaged builtin model, ``spec.model.source.gguf``), converted by an init
#: container into the same emptyDir: a subdirectory, so the finished conversion is renamed
#: into place (a restarted init container never leaves vLLM a half-written model).
CONVERTED_MODEL_DIR = f"{TINY_MODEL_DIR}/hf"
#: Checkpoints (``spec.training.checkpoint``): a PVC or an emptyDir.
CHECKPOINTS_DIR = "/checkpoints"
#: A dataset file from a PVC (``spec.dataset.source.file.pvc``).
DATA_DIR = "/data"
#: An evaluation file from a PVC (``spec.evaluation.source.file.pvc``): the trainer reads
#: ``EVAL_DATA_DIR/<subPath>``.
EVAL_DATA_DIR = "/eval-data"

#: The key of the rollout token in the job's Secret.
TOKEN_KEY = "token"
#: The builtin model's name in ``spec.model.name``.
TINY_MODEL = "builtin:tiny"

#: Paths of the trainer's rank-0 HTTP server.
STATUS_PATH = "/status"
METRICS_PATH = "/metrics"
