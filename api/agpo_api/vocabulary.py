"""The words the operator writes and every reader (CLI, dashboards, tests) matches on.

Phases, condition types and reasons are enums (as verl's ``AdvantageEstimator`` is) so a
misspelling is an ``AttributeError`` at import time, not a silent mismatch at run time. They
are ``StrEnum`` members: they serialise as their plain string in the CR status and in Events.
"""

from __future__ import annotations

from enum import StrEnum

#: kopf's finalizer on every AGPOJob (``settings.persistence.finalizer``); the job's loop
#: waits for it before writing anything.
FINALIZER = "agpo.dev/operator"


# ``status.phase``: Pending -> Initializing -> Running -> Succeeded | Failed, with Restarting
# (the trainer group restarts from its newest checkpoint) and Suspended. (A comment, not a
# docstring: pydantic would copy a docstring into the CRD's schema.)
class Phase(StrEnum):
    PENDING = "Pending"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionType(StrEnum):
    """``status.conditions[].type`` (metav1.Condition), in the order the status lists them."""

    CREATED = "Created"
    ROLLOUT_READY = "RolloutReady"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SPEC_CHANGE_REFUSED = "SpecChangeRefused"
    # A rollout server missed a weight push (weightSync.timeoutSeconds); the others serve.
    WEIGHT_SYNC_DEGRADED = "WeightSyncDegraded"
    # Only on jobs whose checkpoints are on an emptyDir (training.checkpoint.storage.emptyDir).
    EPHEMERAL_CHECKPOINTS = "EphemeralCheckpoints"


class Reason(StrEnum):
    """``reason`` of conditions and Events (CamelCase, as metav1.Condition requires)."""

    # Created
    CHILDREN_CREATED = "ChildrenCreated"
    INVALID_SPEC = "InvalidSpec"
    # RolloutReady
    ROLLOUT_PENDING = "RolloutPending"
    ALL_REPLICAS_READY = "AllReplicasReady"
    REPLICAS_NOT_READY = "ReplicasNotReady"
    ROLLOUT_STOPPED = "RolloutStopped"
    # Running
    PENDING = "Pending"
    TRAINER_RUNNING = "TrainerRunning"
    PODS_NOT_READY = "PodsNotReady"
    RESTARTING = "Restarting"
    # Restarting (the failure that caused a restart is the reason)
    NO_RESTART = "NoRestart"
    RECOVERED = "Recovered"
    TRAINER_POD_FAILED = "TrainerPodFailed"
    TRAINER_JOB_FAILED = "TrainerJobFailed"
    ROLLOUT_POD_FAILED = "RolloutPodFailed"
    PROGRESS_TIMEOUT = "ProgressTimeout"  # no new step within runPolicy.progressTimeoutSeconds
    TOKEN_SECRET_MISSING = "TokenSecretMissing"  # the rollout token Secret was deleted
    # Suspended
    NOT_SUSPENDED = "NotSuspended"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    # Succeeded / Failed, and the Running/RolloutReady reasons after the end
    NOT_FINISHED = "NotFinished"
    TRAINING_SUCCEEDED = "TrainingSucceeded"
    SUCCEEDED = "Succeeded"
    NOT_FAILED = "NotFailed"
    FAILED = "Failed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    PERMANENT_FAILURE = "PermanentFailure"  # the trainer said the spec or data can never work
    STARTUP_TIMEOUT = "StartupTimeout"  # pods not running within startupTimeoutSeconds
    SPEC_CORRECTED = "SpecCorrected"
    # SpecChangeRefused
    IMMUTABLE_FIELD = "ImmutableField"
    SPEC_ACCEPTED = "SpecAccepted"
    # EphemeralCheckpoints
    CHECKPOINTS_ON_EMPTY_DIR = "CheckpointsOnEmptyDir"
    # Events only
    TTL_EXPIRED = "TTLExpired"
    RECONCILE_ERROR = "ReconcileError"
    POD_MONITOR_UNAVAILABLE = "PodMonitorUnavailable"
    POD_GROUP_UNAVAILABLE = "PodGroupUnavailable"
    SERVERS_LAGGING = "ServersLagging"  # WeightSyncDegraded: the message names them
    ALL_SERVERS_SERVING = "AllServersServing"
    ROLLOUT_SCALED = "RolloutScaled"  # spec.rollout.replicas changed on a live job
    CHILDREN_RECREATED = "ChildrenRecreated"


class EventType(StrEnum):
    """Kubernetes Event types."""

    NORMAL = "Normal"
    WARNING = "Warning"
