"""Where rank 0's rollouts come from and where the weights go: the :class:`RolloutBackend`
protocol that :func:`agpo_trainer.train.train` takes as a parameter.

Two implementations: :class:`VLLMBackend` (the product: the vLLM servers' ``/v1/completions``
and the weight syncer, built by :func:`connect`) and
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
    from agpo_trainer.runtime import Runtime

    Weights = nn.Module | dict[str, Tensor]

#: The longest a single weight-sync call may take, whatever the rollout timeout.
WEIGHT_SYNC_CALL_TIMEOUT_S = 120.0


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


#: How ``train`` gets its backend, once the policy is loaded (rank 0 only).
BackendFactory = Callable[[ResolvedSpec, "Runtime", "Policy"], RolloutBackend]


class VLLMBackend:
    """The vLLM servers: generation through :class:`RolloutClient`, weights through the
    :class:`WeightSyncer` (its errors become :class:`WeightSyncFailed`)."""

    def __init__(self, client: Any, syncer: Any) -> None:
        self.client, self.syncer = client, syncer
        self.generate = client.generate  # the client's own signature and errors

    def push(self, weights: Weights, version: int) -> float:
        from agpo_trainer.rollout.weight_sync import WeightSyncError

        try:
            return float(self.syncer.push(weights, version))
        except WeightSyncError as err:
            raise WeightSyncFailed(str(err)) from err

    def resync(self, weights: Weights, version: int) -> float:
        return float(self.syncer.resync(weights, version))

    def lagging(self, version: int) -> dict[str, str]:
        return dict(self.syncer.lagging(version))


def connect(spec: ResolvedSpec, rt: Runtime, policy: Policy) -> VLLMBackend:
    """Rank 0: the vLLM servers of ``AGPO_ROLLOUT_URLS``, joined to the weight transport."""
    from agpo_trainer.policy import compute_dtype_of
    from agpo_trainer.rollout.client import RolloutClient
    from agpo_trainer.rollout.weight_sync import WeightSyncer

    timeout = rt.rollout_timeout_s
    client = RolloutClient(rt.rollout_urls, rt.rollout_token, timeout_s=timeout)
    syncer = WeightSyncer(
        rt.rollout_urls,
        token=rt.rollout_token,
        backend=spec.rollout.weight_sync.backend,
        master_address=rt.weight_sync_host,
        master_port=rt.weight_sync_port,
        timeout_s=min(WEIGHT_SYNC_CALL_TIMEOUT_S, timeout),
        ready_timeout_s=timeout,
        # float32 master weights travel in the dtype the servers serve (model.dtype)
        cast_dtype=compute_dtype_of(spec),
    )
    syncer.init()
    return VLLMBackend(client, syncer)
