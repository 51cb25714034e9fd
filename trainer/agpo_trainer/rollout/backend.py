"""Where rank 0's rollouts come from and where the weights go: the :class:`RolloutBackend`
protocol that :func:`agpo_trainer.train.train` takes as a parameter.

Two implementations: :class:`agpo_trainer.rollout.pool.ElasticPool` (the product: the vLLM
servers' ``/v1/completions`` and the weight syncer, an elastic pool built by :func:`connect`)
and
:class:`agpo_trainer.rollout.inprocess.InProcessBackend` (a served copy of the policy in this
process, for the study, the gate and tests), so every caller runs the product's loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from agpo_api.resolved import ResolvedSpec
from agpo_trainer.rollout.client import Completion

if TYPE_CHECKING:
    from torch import Tensor, nn

    from agpo_trainer.policy import Policy
    from agpo_trainer.rollout.pool import ElasticPool, PoolHealth
    from agpo_trainer.runtime import Runtime

    Weights = nn.Module | dict[str, Tensor]


class WeightSyncFailed(RuntimeError):
    """A push did not reach every server (one died or was replaced mid-push)."""


class RolloutBackend(Protocol):
    """Generates completions with the weights it was last pushed, and takes new weights."""

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], *, n: int, **sampling: Any
    ) -> list[Completion]:
        """``n`` completions per prompt, ordered by (prompt, sample), sampled with ``max_tokens``,
        ``temperature``, ``top_p`` and ``seed`` (:meth:`RolloutClient.generate`'s keywords);
        prompt ``i`` samples from seed ``seed + i * n`` (completion ``j`` of it from ``+ j``),
        wherever it is served."""
        ...

    def push(self, weights: Weights, version: int) -> float:
        """Serve ``weights`` as ``version`` everywhere; the seconds it took. Raises
        :class:`WeightSyncFailed` when a server missed it."""
        ...

    def resync(self, weights: Weights, version: int) -> float:
        """Join every server again (replaced ones included) and push; the seconds it took."""
        ...

    def lagging(self, version: int) -> dict[str, str]:
        """``{server: served version}`` of the servers not serving ``version``."""
        ...

    def refresh(self, weights: Weights, version: int) -> float:
        """A step boundary: make the servers that will generate serve ``version`` (join new
        ones, catch up replaced or lagging ones, drop gone ones); the seconds its joins,
        pushes and waits took (0 when every server already served it)."""
        ...

    def health(self) -> PoolHealth | None:
        """The servers joined, serving, lagging, and each push's seconds since the last call
        (None: not a pool of servers)."""
        ...


#: How ``train`` gets its backend, once the policy is loaded (rank 0 only).
BackendFactory = Callable[[ResolvedSpec, "Runtime", "Policy"], RolloutBackend]


def connect(spec: ResolvedSpec, rt: Runtime, policy: Policy) -> ElasticPool:
    """Rank 0: the vLLM servers (``AGPO_ROLLOUT_DISCOVERY``, else the fixed
    ``AGPO_ROLLOUT_URLS``), the ones there now joined to the weight transport."""
    from agpo_trainer.policy import compute_dtype_of
    from agpo_trainer.rollout.client import RolloutClient
    from agpo_trainer.rollout.discovery import discovery_from
    from agpo_trainer.rollout.pool import ElasticPool
    from agpo_trainer.rollout.weight_sync import WeightSyncer

    timeout = rt.rollout_timeout_s
    push_timeout = float(spec.rollout.weight_sync.timeout_seconds)
    discovery = discovery_from(rt.rollout_discovery, rt.rollout_urls)
    # The pool hands it the servers that serve the pushed weights.
    client = RolloutClient([], rt.rollout_token, timeout_s=timeout)
    syncer = WeightSyncer(
        [],
        token=rt.rollout_token,
        backend=spec.rollout.weight_sync.backend,
        master_address=rt.weight_sync_host,
        master_port=rt.weight_sync_port,
        timeout_s=push_timeout,
        ready_timeout_s=timeout,
        # float32 master weights travel in the dtype the servers serve (model.dtype)
        cast_dtype=compute_dtype_of(spec),
    )
    pool = ElasticPool(
        discovery, client, syncer, ready_timeout_s=timeout, push_timeout_s=push_timeout
    )
    pool.start()
    return pool
