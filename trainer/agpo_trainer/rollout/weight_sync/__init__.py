"""Trainer side of weight synchronisation into running vLLM servers.

One `push` = vLLM's native RL round trip on every server:

    POST /pause?mode=wait           in-flight requests finish, caches are cleared
    POST /start_weight_update       workers start a layerwise reload
    POST /update_weights            workers receive ...
         + broadcast from here      ... while this process sends the packed tensors
    POST /finish_weight_update      reload finalised, served version := policy version
    POST /resume
    GET  /weight_info               must now report the version, on every server

`WeightSyncer` (syncer.py) orchestrates: discover, pause, resume, verify. A `Transport`
(transport.py) does the middle three steps per server: `GlooTransport` (gloo.py; this
project's plugin, CPU and GPU, TCP) or `NcclTransport` (nccl.py; vLLM's, GPU only, needs
`vllm` in the trainer image). Both use one process group per server with this process as
rank 0 and the server's workers as ranks 1..n; see docs/weight-sync.md. Every call has a
timeout, so a dead server gives a `WeightSyncError` naming it, not a hang.
"""

from agpo_trainer.rollout.weight_sync.gloo import GlooTransport
from agpo_trainer.rollout.weight_sync.nccl import HTTPWeightSyncClient, NcclTransport
from agpo_trainer.rollout.weight_sync.syncer import (
    BACKENDS,
    PushRound,
    SyncStats,
    WeightSyncer,
    default_master_address,
)
from agpo_trainer.rollout.weight_sync.transport import (
    Server,
    ServerCalls,
    Transport,
    WeightSyncError,
    during_http,
)

__all__ = [
    "BACKENDS",
    "GlooTransport",
    "HTTPWeightSyncClient",
    "NcclTransport",
    "PushRound",
    "Server",
    "ServerCalls",
    "SyncStats",
    "Transport",
    "WeightSyncError",
    "WeightSyncer",
    "default_master_address",
    "during_http",
]
