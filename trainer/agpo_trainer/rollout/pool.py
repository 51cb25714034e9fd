"""The vLLM servers as an elastic pool: the :class:`RolloutBackend` the trainer uses by default.

The pool is read again at every step boundary (:meth:`ElasticPool.refresh`, before a batch is
generated with the weights just pushed):

* a server the discovery lists and that answers ``/health`` is joined to the weight transport
  in a group of its own and pushed the current weights *before* it gets any prompt;
* a server the discovery no longer lists leaves; requests in flight to a server that vanished
  go to the others (:class:`RolloutClient`), with the same per-prompt seeds, so the data
  order and counts are those of an uninterrupted run;
* a server that reports another version than the one it was pushed (replaced in place) is
  joined and pushed again.

A weight push goes to every joined server at once, each bounded by
``weightSync.timeoutSeconds``. A server that misses it is *lagging*: it gets no prompts, its
group is dropped, and it is joined and pushed again at a later boundary, backing off (a
server that stalls would otherwise stall every step). The run goes on while one server
serves the new weights (``laggingServers`` on ``/status``: the operator's
``WeightSyncDegraded``); when none does, the push fails and the loop joins everyone again,
then gives up (a restart).

Why a join does not stall the others: every server has its own group (gloo: its own prefix on
the trainer's one store; nccl: its own port), so a new server's rendezvous and first push
involve no other server, which keeps generating with the weights it has.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agpo_api.layout import NCCL_SYNC_PORTS
from agpo_trainer.rollout.backend import WeightSyncFailed
from agpo_trainer.rollout.client import Completion, RolloutClient
from agpo_trainer.rollout.discovery import Discovery, StaticDiscovery
from agpo_trainer.rollout.http import HttpCallError, call, one_line
from agpo_trainer.rollout.weight_sync import PushRound, Server, WeightSyncer, WeightSyncError

if TYPE_CHECKING:
    from agpo_trainer.rollout.backend import Weights

log = logging.getLogger("agpo_trainer")

#: How long a listed server may take to answer ``/health`` (or ``/weight_info``) before the
#: boundary goes on without it; it is asked again at the next boundary.
PROBE_TIMEOUT_S = 3.0
#: A lagging server is tried again after ``timeoutSeconds * 2**(misses - 1)``, at most this.
MAX_RETRY_S = 600.0
#: While no server serves the weights, the pool looks again this often.
WAIT_POLL_S = 1.0
#: How long joining a server that answered /health may wait for its ``/get_world_size``.
JOIN_WAIT_S = 10.0


@dataclass
class Member:
    """One server of the pool."""

    server: Server
    served: str | None = None  # the version it serves as far as the pool knows
    joined: bool = False  # has a group with this process that a push can use
    misses: int = 0  # pushes or joins missed in a row
    retry_at: float = 0.0  # monotonic time before which it is not tried again

    @property
    def url(self) -> str:
        return self.server.url


@dataclass(frozen=True)
class PoolHealth:
    """The pool after the last boundary or push (``/status``, the CR status, Prometheus)."""

    servers: int  # joined or trying to
    serving: int  # serving the newest pushed weights
    lagging: list[str]  # the servers not serving them
    push_seconds: dict[str, list[float]] = field(default_factory=dict)  # since the last call


class ElasticPool:
    """The servers ``discovery`` lists, joined and pushed to as they come and go."""

    def __init__(
        self,
        discovery: Discovery,
        client: RolloutClient,
        syncer: WeightSyncer,
        *,
        ready_timeout_s: float,
        push_timeout_s: float,
        max_servers: int | None = None,
    ) -> None:
        self.discovery = discovery
        # nccl's block of sync ports bounds the pool; gloo has one port for all
        self.max_servers = max_servers or (
            NCCL_SYNC_PORTS if syncer.backend == "nccl" else sys.maxsize
        )
        self.client = client
        self.syncer = syncer
        self.ready_timeout_s = ready_timeout_s
        self.push_timeout_s = push_timeout_s
        self.members: dict[str, Member] = {}
        self.version: int | None = None  # the newest version pushed
        self._pushes: dict[str, list[float]] = {}
        self._reported: frozenset[str] = frozenset()  # lagging servers last warned about

    def start(self) -> None:
        """Join the servers listed now, before the first push: every fixed one (waiting for
        each as long as the job waits for servers), or, discovered, those that answer
        (waiting for one); the others join at a boundary."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            self._listed()
            static = isinstance(self.discovery, StaticDiscovery)
            wait_s = self.ready_timeout_s if static else JOIN_WAIT_S
            members = list(self.members.values())
            failed = self.syncer.join([m.server for m in members], ready_timeout_s=wait_s)
            for member in members:
                member.joined = member.url not in failed
            if static and failed:
                url, err = next(iter(failed.items()))
                raise WeightSyncFailed(f"rollout server {url} could not join: {err}")
            if any(m.joined for m in members):
                return
            if time.monotonic() >= deadline:
                raise WeightSyncFailed(
                    f"no rollout server answered within {self.ready_timeout_s:.0f}s "
                    f"({self._why_not()})"
                )
            time.sleep(WAIT_POLL_S)

    # --- RolloutBackend ----------------------------------------------------------------

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], *, n: int, **sampling: Any
    ) -> list[Completion]:
        return self.client.generate(prompt_token_ids, n=n, **sampling)

    def push(self, weights: Weights, version: int) -> float:
        """Push into every joined server; raises :class:`WeightSyncFailed` only when none
        serves ``version`` afterwards (the others lag and are caught up later)."""
        start = time.perf_counter()
        self.version = version
        joined = [m.server for m in self.members.values() if m.joined]
        self._settle(self.syncer.push_each(weights, version, joined), version)
        self._publish()
        if not self.serving():
            raise WeightSyncFailed(
                f"no rollout server took weight version {version}: {self._why_not()}"
            )
        return time.perf_counter() - start

    def resync(self, weights: Weights, version: int) -> float:
        """Every listed server joined again and pushed ``version``, waiting up to the ready
        timeout for one to serve it; raises :class:`WeightSyncFailed` if none does."""
        start = time.perf_counter()
        self.version = version
        for member in self.members.values():
            member.joined, member.retry_at = False, 0.0
        self._catch_up(weights, version)
        return time.perf_counter() - start  # resync: all of it is joining and pushing

    def refresh(self, weights: Weights, version: int) -> float:
        """A step boundary: the listed servers joined, the gone ones dropped, the lagging
        ones (when their retry is due) and the new ones pushed ``version``; waits up to the
        ready timeout while none serves it. Returns the seconds spent joining, pushing and
        waiting (0 when every server already served ``version``: the checks are no push)."""
        self.version = version
        self._listed()  # an unlisted server leaves before it is asked anything
        self._verify(version)
        return self._catch_up(weights, version)

    def lagging(self, version: int) -> dict[str, str]:
        """``{server: served version}`` of the serving servers that no longer serve
        ``version`` (replaced in place while generating; every member when none serves).
        One that does not answer left: its requests went to the others, so it does not
        spoil the batch."""
        return self._verify(version)

    def health(self) -> PoolHealth:
        pushes, self._pushes = self._pushes, {}
        return PoolHealth(
            servers=len(self.members),
            serving=len(self.serving()),
            lagging=self._lagging(),
            push_seconds=pushes,
        )

    def _lagging(self) -> list[str]:
        """Members that missed a push or a join (a new one being joined is not lagging)."""
        serving = self.serving()
        return sorted(u for u, m in self.members.items() if m.misses and u not in serving)

    def serving(self) -> list[str]:
        want = None if self.version is None else str(self.version)
        return [u for u, m in self.members.items() if m.joined and m.served == want]

    # --- the boundary's parts -------------------------------------------------------------

    def _verify(self, version: int) -> dict[str, str]:
        """Ask each serving server what it serves; a changed one (replaced in place) is
        returned and caught up at the next boundary. A silent one gets no prompts until it
        answers again, without counting as lagging: it died or is being scaled away, and
        its requests in flight went to the others. When no server serves ``version`` any
        more, every member is returned: a batch must not be trusted then."""
        changed: dict[str, str] = {}
        for url in self.serving():
            member = self.members[url]
            try:
                answer = call(
                    "GET",
                    f"{url}/weight_info",
                    token=self.syncer.token,
                    timeout_s=PROBE_TIMEOUT_S,
                ).json()
            except (HttpCallError, ValueError) as exc:
                self._silent(member, exc)
                continue
            served = str(answer.get("weight_version") if isinstance(answer, dict) else None)
            if served != str(version):
                changed[url] = served
                self._miss(member, f"serves version {served}, not {version} (replaced?)", 0.0)
        self._publish()
        if not self.serving():
            changed.update({u: str(m.served) for u, m in self.members.items()})
        return changed

    def _silent(self, member: Member, exc: Exception) -> None:
        """``member`` does not answer: no prompts, no group, asked again at the next boundary
        (not a missed push: no WeightSyncDegraded for a server that went away)."""
        self._drop_group(member)
        member.joined, member.served, member.retry_at = False, None, 0.0
        log.warning(
            "rollout server %s does not answer (%s); it gets no prompts until it answers again",
            member.url,
            one_line(str(exc)),
        )

    def _listed(self) -> list[str]:
        """The discovery's servers: new ones become members (not joined yet), gone ones leave."""
        urls = self.discovery.urls()
        if not urls and not isinstance(self.discovery, StaticDiscovery):
            return list(self.members)  # a DNS hiccup does not empty the pool
        for url in [u for u in self.members if u not in urls]:
            log.warning("rollout server %s left the pool", url)
            self.syncer.remove(self.members.pop(url).server)
        for url in [u for u in urls if u not in self.members]:
            if len(self.members) >= self.max_servers:
                # nccl: server i joins on weightSync.port + i, and only NCCL_SYNC_PORTS of
                # them are admitted (a terminating pod and its replacement, listed at once)
                log.warning("rollout server %s waits: the pool has %d servers, the most "
                            "this transport admits", url, self.max_servers)  # fmt: skip
                continue
            # A discovered server becomes a member once it answers (the headless Service
            # lists pods still loading their model); a fixed one is one from the start.
            if isinstance(self.discovery, StaticDiscovery) or _healthy(url):
                self.members[url] = Member(self.syncer.add(url))
        return urls

    def _catch_up(self, weights: Weights, version: int) -> float:
        """Join and push every member not serving ``version`` whose retry is due; while none
        serves, look again until the ready timeout. The seconds of joins, pushes and waits."""
        deadline = time.monotonic() + self.ready_timeout_s
        spent = 0.0
        while True:
            start = time.perf_counter()
            self._listed()
            due = [
                m
                for m in self.members.values()
                if m.url not in self.serving() and m.retry_at <= time.monotonic()
            ]
            if due:
                self._join_and_push(due, weights, version)
            self._publish()
            if self.serving():
                return spent + (time.perf_counter() - start if due else 0.0)
            if time.monotonic() >= deadline:
                raise WeightSyncFailed(
                    f"no rollout server serves weight version {version} after "
                    f"{self.ready_timeout_s:.0f}s: {self._why_not()}"
                )
            for member in self.members.values():  # nobody serves: no backing off now
                member.retry_at = 0.0
            time.sleep(WAIT_POLL_S)
            spent += time.perf_counter() - start

    def _join_and_push(self, due: list[Member], weights: Weights, version: int) -> None:
        # One that does not answer /health yet (starting, restarting in place) is asked
        # again at the next boundary, without counting a miss.
        up = [m for m in due if _healthy(m.url)]
        failed = self.syncer.join([m.server for m in up], ready_timeout_s=JOIN_WAIT_S)
        for member in up:
            if member.url in failed:
                self._miss(member, f"could not join ({failed[member.url]})")
            else:
                member.joined = True
        joined = [m.server for m in up if m.joined]
        if joined:
            self._settle(self.syncer.push_each(weights, version, joined), version)
            for server in joined:
                if server.url in self.serving():
                    log.info(
                        "rollout server %s joined, serving weight version %d", server.url, version
                    )

    def _settle(self, round_: PushRound, version: int) -> None:
        for url, seconds in round_.seconds.items():
            self._pushes.setdefault(url, []).append(seconds)
        for url in round_.served(version):
            if url in self.members:
                member = self.members[url]
                member.served, member.misses, member.retry_at = str(version), 0, 0.0
        for url, why in round_.missed(version).items():
            if url not in self.members:
                continue
            if _healthy(url):  # up, but did not take the push: it lags behind
                self._miss(self.members[url], f"missed weight version {version}: {why}")
            else:  # gone (stopped, scaled away, died): not behind, just absent
                self._silent(self.members[url], RuntimeError(why))

    def _drop_group(self, member: Member) -> None:
        # A transport that cannot tear a group down (vLLM's nccl engine shutting down a dead
        # peer's communicator) must not stop the boundary: the group is forgotten anyway.
        try:
            self.syncer.transport.drop(member.server)
        except Exception as exc:
            log.warning("dropping the weight-sync group of %s failed: %s", member.url, exc)

    def _miss(self, member: Member, why: str, backoff: float | None = None) -> None:
        """``member`` gets no prompts until it is joined and pushed again, after a backoff."""
        self._drop_group(member)
        member.joined, member.served = False, None
        member.misses += 1
        delay = (
            min(self.push_timeout_s * 2 ** (member.misses - 1), MAX_RETRY_S)
            if backoff is None
            else backoff
        )
        member.retry_at = time.monotonic() + delay
        log.warning(
            "rollout server %s %s; it gets no prompts until it is pushed to again (in %.0fs)",
            member.url,
            one_line(why),
            delay,
        )

    def _publish(self) -> None:
        """Hand the serving servers to the client; say once when the set of laggards moves."""
        serving = self.serving()
        self.client.set_urls(serving)  # none: generate fails at once instead of guessing
        lagging = frozenset(self._lagging())
        if lagging != self._reported and self.version is not None:
            if lagging:
                log.warning(
                    "weight sync degraded: %d of %d server(s) serve version %d; lagging: %s",
                    len(serving),
                    len(self.members),
                    self.version,
                    ", ".join(sorted(lagging)),
                )
            else:
                log.info("all %d rollout server(s) serve version %d", len(serving), self.version)
            self._reported = lagging

    def _why_not(self) -> str:
        listed = ", ".join(sorted(self.members)) or "none listed"
        return f"servers: {listed}"


def _healthy(url: str) -> bool:
    try:
        call("GET", f"{url}/health", token=None, timeout_s=PROBE_TIMEOUT_S)
    except HttpCallError:
        return False
    return True


__all__ = ["ElasticPool", "Member", "PoolHealth", "WeightSyncError"]
