"""Fixtures for the operator tests: an emulated API server, the real kopf operator, a fake kubelet.

The operator runs unmodified (``kopf.operator`` with the handlers of ``agpo_operator``) and
talks HTTP to :class:`kube_emulator.Cluster` through a kubeconfig file -- no client class is
patched. The tests act as the user (creating AGPOJobs) and as the controllers and kubelet
(creating pods for the StatefulSet and the Job, patching pod phases), then wait -- by polling
with a timeout, never by sleeping -- for the status, the events and the children to follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import kopf
import pytest
import pytest_asyncio
import yaml
from kube_emulator import STATEFULSET_SCALE, Cluster, ScalePaths, Served

import agpo_operator  # noqa: F401
from agpo_api import parse_job
from agpo_api.crd import crd
from agpo_operator import handlers  # noqa: F401
from agpo_operator.act import ActContext
from agpo_operator.actions import Event
from agpo_operator.builders import CHILDREN, BuildOptions, Registry
from agpo_operator.builders.child import AGPOJOB, EVENT, POD, Kind
from agpo_operator.builders.common import Names
from agpo_operator.kube import ApiError
from agpo_operator.rbac import allows, rbac_rules

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "manifests" / "samples"
NS = "ml"
AGPOJOBS = kmock.resource("agpo.dev", "v1alpha1", "agpojobs")
# By plural: every kind the operator creates (its child registry), reads or writes.
RESOURCES = {
    k.plural: kmock.resource(k.group, k.version, k.plural)
    for k in (*CHILDREN.kinds(), POD, EVENT, AGPOJOB)
}
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")


# ---------------------------------------------------------------------- waiting
async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or check}; last: {last!r}")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------- the cluster
class World:
    """The emulated cluster with user, controller and kubelet actions over HTTP."""

    def __init__(self, cluster: Cluster, progress: dict[tuple[str, str], Any]) -> None:
        self.cluster = cluster
        self.progress = progress  # what the fake trainer /status serves, by (ns, job)

    # -- reading the emulator's state
    def get(self, plural: str, name: str, namespace: str = NS) -> dict[str, Any] | None:
        key = (RESOURCES[plural], namespace, name)
        objects = self.cluster.objects
        if key not in objects or objects[key].deleted:
            return None
        return copy.deepcopy(objects[key].raw)

    def all(self, plural: str, namespace: str = NS) -> list[dict[str, Any]]:
        out = []
        for (resource, ns, _), obj in self.cluster.objects.items():
            if resource == RESOURCES[plural] and ns == namespace and not obj.deleted:
                out.append(copy.deepcopy(obj.raw))
        return out

    def versions(self, plural: str, name: str, namespace: str = NS) -> list[dict[str, Any]]:
        """Every state the object has had, oldest first (the emulator keeps them all)."""
        obj = self.cluster.objects[RESOURCES[plural], namespace, name]
        return [copy.deepcopy(dict(v)) for v in obj.history]

    def status(self, name: str, namespace: str = NS) -> dict[str, Any]:
        return (self.get("agpojobs", name, namespace) or {}).get("status") or {}

    def condition(self, name: str, ctype: str, namespace: str = NS) -> dict[str, Any]:
        for cond in self.status(name, namespace).get("conditions") or []:
            if cond["type"] == ctype:
                return dict(cond)
        return {}

    def events(self, name: str, namespace: str = NS) -> list[dict[str, Any]]:
        return [
            e for e in self.all("events", namespace)
            if e.get("involvedObject", {}).get("name") == name
            and e.get("involvedObject", {}).get("kind") == "AGPOJob"
        ]  # fmt: skip

    def reasons(self, name: str, namespace: str = NS) -> list[str]:
        return [e["reason"] for e in self.events(name, namespace)]

    # -- the request log
    def operator_requests(self) -> list[Served]:
        return [s for s in self.cluster.served if s.user_agent.startswith(OPERATOR_AGENTS)]

    def creates(self, plural: str, name: str | None = None) -> list[Served]:
        return [
            s for s in self.operator_requests()
            if s.request.method.value == "POST" and s.request.resource == RESOURCES[plural]
            and (name is None or (s.request.data or {}).get("metadata", {}).get("name") == name)
        ]  # fmt: skip

    def creates_all(self) -> list[Served]:
        """Every object the operator created (a POST that was answered 201)."""
        return [s for s in self.operator_requests()
                if s.request.method.value == "POST" and s.status == 201]  # fmt: skip

    def deletes(self, plural: str, name: str | None = None) -> list[Served]:
        return [
            s for s in self.operator_requests()
            if s.request.method.value == "DELETE" and s.request.resource == RESOURCES[plural]
            and (name is None or s.request.name == name)
        ]  # fmt: skip

    def errors(self) -> list[str]:
        return [str(s) for s in self.cluster.served if s.status >= 400]

    def forbidden(self) -> list[str]:
        """Operator requests the RBAC rules of agpo_operator.rbac would not allow."""
        rules = rbac_rules()
        out = []
        for s in self.operator_requests():
            req = s.request
            if req.resource is None or req.resource.plural is None:
                continue  # discovery (/api, /apis, /version): allowed to every account
            verb = _verb(req)
            resource = req.resource.plural + (f"/{req.subresource}" if req.subresource else "")
            if not allows(rules, req.resource.group or "", resource, verb):
                out.append(f"{verb} {req.resource.group}/{resource}")
        return sorted(set(out))

    # -- the user
    async def http(
        self, method: str, path: str, body: Any = None, content_type: str | None = None
    ) -> Any:
        headers = {"Content-Type": content_type} if content_type else {}
        data = json.dumps(body) if body is not None else None
        async with self.cluster.request(method, path, data=data, headers=headers) as response:
            text = await response.text()
            assert response.status < 300, f"{method} {path}: {response.status} {text}"
            return json.loads(text) if text else None

    async def create_job(self, manifest: dict[str, Any], namespace: str = NS) -> dict[str, Any]:
        return await self.http(  # type: ignore[no-any-return]
            "POST", f"/apis/agpo.dev/v1alpha1/namespaces/{namespace}/agpojobs", manifest
        )

    async def patch_job(self, name: str, patch: dict[str, Any], namespace: str = NS) -> Any:
        return await self.http(
            "PATCH", f"/apis/agpo.dev/v1alpha1/namespaces/{namespace}/agpojobs/{name}", patch,
            "application/merge-patch+json",
        )  # fmt: skip

    async def delete_job(self, name: str, namespace: str = NS) -> Any:
        return await self.http(
            "DELETE", f"/apis/agpo.dev/v1alpha1/namespaces/{namespace}/agpojobs/{name}"
        )

    # -- the StatefulSet/Job controllers and the kubelet
    async def start_rollout(self, job: str, ready: bool = True, namespace: str = NS) -> list[str]:
        """Create the StatefulSet's pods (as its controller does) and run them."""
        sts = self.get("statefulsets", f"{job}-rollout", namespace)
        assert sts is not None, "no rollout StatefulSet"
        names = []
        for i in range(sts["spec"]["replicas"]):
            name = f"{job}-rollout-{i}"
            await self._create_pod(sts, name, {}, namespace)
            await self.set_pod(name, "Running", ready=ready, namespace=namespace)
            names.append(name)
        await self._rollout_status(sts, namespace)
        return names

    async def sync_rollout(self, job: str, ready: bool = True, namespace: str = NS) -> list[str]:
        """What the StatefulSet controller does after a scale, for each of the job's vLLM
        StatefulSets (``<job>-rollout`` and a gang job's ``<job>-rollout-x``): pods for the
        missing ordinals (run, ``ready`` or not), those it owns beyond ``spec.replicas``
        deleted, the status. Returns the new pods."""
        found = [self.get("statefulsets", f"{job}-{suffix}", namespace)
                 for suffix in ("rollout", "rollout-x")]  # fmt: skip
        stss = [s for s in found if s is not None]
        assert stss, "no rollout StatefulSet"
        new = []
        for sts in stss:
            name = sts["metadata"]["name"]
            wanted = {f"{name}-{i}" for i in range(sts["spec"]["replicas"])}
            have = set(self.owned_pods(sts, namespace))
            for pod in sorted(have - wanted):
                await self.http("DELETE", f"/api/v1/namespaces/{namespace}/pods/{pod}")
            for pod in sorted(wanted - have):
                await self._create_pod(sts, pod, {}, namespace)
                await self.set_pod(pod, "Running", ready=ready, namespace=namespace)
                new.append(pod)
            await self._rollout_status(sts, namespace)
        return sorted(new)

    def owned_pods(self, owner: dict[str, Any], namespace: str = NS) -> list[str]:
        """The pods whose controller is ``owner`` (how a StatefulSet tells its pods)."""
        uid = owner["metadata"]["uid"]
        return sorted(
            p["metadata"]["name"] for p in self.all("pods", namespace)
            if any(r.get("uid") == uid and r.get("controller")
                   for r in p["metadata"].get("ownerReferences") or [])
        )  # fmt: skip

    async def _rollout_status(self, sts: dict[str, Any], namespace: str) -> None:
        """A StatefulSet's status from the pods it owns, as its controller writes it."""
        pods = [self.get("pods", p, namespace) or {} for p in self.owned_pods(sts, namespace)]
        ready = sum(
            any(c["type"] == "Ready" and c["status"] == "True"
                for c in (p.get("status") or {}).get("conditions") or [])
            for p in pods
        )  # fmt: skip
        status = {"replicas": len(pods), "readyReplicas": ready}
        name = sts["metadata"]["name"]
        await self.http(
            "PATCH", f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}/status",
            {"status": status}, "application/merge-patch+json",
        )  # fmt: skip

    async def start_trainer(
        self, job: str, phase: str = "Running", namespace: str = NS,
        waiting: tuple[str, str] | None = None,
    ) -> list[str]:  # fmt: skip
        """Create the Indexed Job's pods (as the Job controller does) in ``phase``, their
        container waiting with ``waiting`` (reason, message) when given."""
        tj = self.get("jobs", f"{job}-trainer", namespace)
        assert tj is not None, "no trainer Job"
        names = []
        for i in range(tj["spec"]["completions"]):
            name = f"{job}-trainer-{i}-{tj['metadata']['uid'][:5]}"
            index = {"batch.kubernetes.io/job-completion-index": str(i)}
            await self._create_pod(tj, name, index, namespace)
            await self.set_pod(name, phase, waiting=waiting, namespace=namespace)
            names.append(name)
        return names

    async def _create_pod(
        self, owner: dict[str, Any], name: str, index: dict[str, str], namespace: str
    ) -> None:
        template = owner["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {**template["metadata"]["labels"], **index},
                "annotations": index,
                "ownerReferences": [{
                    "apiVersion": owner["apiVersion"], "kind": owner["kind"],
                    "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                    "controller": True, "blockOwnerDeletion": True,
                }],
            },
            "spec": template["spec"],
        }  # fmt: skip
        await self.http("POST", f"/api/v1/namespaces/{namespace}/pods", pod)

    async def set_pod(self, name: str, phase: str, *, ready: bool | None = None,
                      exit_code: int | None = None, restarts: int = 0,
                      message: str | None = None, waiting: tuple[str, str] | None = None,
                      namespace: str = NS) -> None:  # fmt: skip
        """The kubelet's status of a pod; ``message`` is the terminated container's
        termination message, ``waiting`` a (reason, message) its container waits with."""
        status: dict[str, Any] = {"phase": phase}
        if ready is not None:
            status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        state: dict[str, Any] = {"running": {}} if phase == "Running" else {}
        if exit_code is not None:
            state = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": "Error" if exit_code else "Completed",
                    **({"message": message} if message is not None else {}),
                }
            }
        if waiting is not None:
            state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
        status["containerStatuses"] = [{"name": "main", "restartCount": restarts, "state": state}]
        await self.http(
            "PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status", {"status": status},
            "application/merge-patch+json",
        )  # fmt: skip

    def pods(self, job: str, role: str, namespace: str = NS) -> list[str]:
        return sorted(
            p["metadata"]["name"] for p in self.all("pods", namespace)
            if p["metadata"]["labels"].get("agpo.dev/job") == job
            and p["metadata"]["labels"].get("agpo.dev/role") == role
        )  # fmt: skip

    def replaced(self, pod: str, uid: str, namespace: str = NS) -> bool:
        """The pod with ``uid`` was deleted (and maybe already recreated under its name by its
        StatefulSet: a new uid)."""
        now = self.get("pods", pod, namespace)
        return now is None or now["metadata"]["uid"] != uid

    def set_progress(self, job: str, namespace: str = NS, **values: Any) -> None:
        self.progress[(namespace, job)] = values


def _verb(req: kmock.Request) -> str:
    method = req.method.value
    if method == "GET":
        if req.params.get("watch") == "true":
            return "watch"
        return "get" if req.name else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


def sample(file: str = "tiny-cpu", **changes: Any) -> dict[str, Any]:
    """A sample manifest (a fresh dict), renamed and with ``spec`` parts (a__b=...) replaced."""
    manifest = yaml.safe_load((SAMPLES / f"{file}.yaml").read_text())
    manifest["metadata"].pop("namespace", None)
    if "name" in changes:
        manifest["metadata"]["name"] = changes.pop("name")
    for path, value in changes.items():
        node = manifest["spec"]
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return manifest


# ---------------------------------------------------------------------- acting without a cluster
Call = tuple[str, str, str]  # (verb, kind, name)


class FakeKube:
    """Records every call as (verb, kind, name); ``existing`` objects answer a create with 409
    and a get with themselves."""

    def __init__(self, existing: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        self.calls: list[Call] = []
        self.existing = existing or {}

    async def create(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", kind.kind, obj["metadata"]["name"]))
        if (kind.kind, obj["metadata"]["name"]) in self.existing:
            raise ApiError(409, "AlreadyExists")
        return obj

    async def get(self, kind: Kind, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind.kind, name))
        return self.existing.get((kind.kind, name))

    async def delete(self, kind: Kind, ns: str, name: str, **_: Any) -> bool:
        self.calls.append(("delete", kind.kind, name))
        return True

    async def patch(self, kind: Kind, ns: str, name: str, patch: Any, **_: Any) -> dict[str, Any]:
        self.calls.append(("patch", kind.kind, name))
        return {}


def act_context(kube: FakeKube, events: list[Event], children: Registry = CHILDREN,
                api_groups: frozenset[str] = frozenset(), **spec_changes: Any) -> ActContext:  # fmt: skip
    """What the actions of one pass get: job ``j`` in namespace ``ns`` from a sample, the API
    groups the cluster serves, a list for the Events, the child registry."""
    manifest = sample(**spec_changes)
    manifest["metadata"] = {"name": "j"}

    async def has_api_group(group: str) -> bool:
        return group in api_groups

    return ActContext(
        kube=kube,  # type: ignore[arg-type]
        options=BuildOptions(),
        names=Names(job="j", namespace="ns"),
        uid="uid-1",
        spec=parse_job(manifest).spec,
        has_api_group=has_api_group,
        post_event=events.append,
        children=children,
    )


# ---------------------------------------------------------------------- fixtures
@pytest_asyncio.fixture()
async def trainer_status() -> AsyncIterator[tuple[str, dict[tuple[str, str], Any]]]:
    """A stand-in for rank 0's ``/status``: serves ``progress[(ns, job)]`` as JSON."""
    progress: dict[tuple[str, str], Any] = {}

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        key = (request.match_info["ns"], request.match_info["job"])
        if key not in progress:
            return aiohttp.web.Response(status=503)
        return aiohttp.web.json_response(progress[key])

    app = aiohttp.web.Application()
    app.router.add_get("/{ns}/{job}/status", handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/{{namespace}}/{{job}}/status", progress
    await runner.cleanup()


@pytest_asyncio.fixture()
async def world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    trainer_status: tuple[str, dict[tuple[str, str], Any]],
) -> AsyncIterator[World]:  # fmt: skip
    """The emulator, a kubeconfig pointing at it, and the operator's test configuration."""
    url, progress = trainer_status
    async with Cluster() as cluster, kmock.Server(cluster) as server:
        with warnings.catch_warnings():  # kmock uses a deprecated importlib.resources call
            warnings.simplefilter("ignore", DeprecationWarning)
            cluster.resources.load_bundled()
        cluster.resources[AGPOJOBS] = kmock.ResourceInfo(
            kind="AGPOJob", singular="agpojob", namespaced=True, subresources={"status", "scale"},
            verbs={"get", "list", "watch", "create", "patch", "delete"},
        )  # fmt: skip
        # The scale subresources: the CRD's own paths (never written here a second time), and
        # the StatefulSet's, which kube-apiserver maps itself.
        [version] = crd()["spec"]["versions"]
        cluster.scales[AGPOJOBS] = ScalePaths.of_crd(version["subresources"]["scale"])
        cluster.scales[RESOURCES["statefulsets"]] = STATEFULSET_SCALE
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "tester", "user": {"token": "test-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
        }))  # fmt: skip
        for name, value in {
            "KUBECONFIG": str(kubeconfig),
            "AGPO_METRICS_PORT": "0",
            "AGPO_TRAINER_STATUS_URL": url,
            "AGPO_STATUS_POLL_SECONDS": "0.1",
            "AGPO_RESYNC_SECONDS": "1",
            "AGPO_TRAINER_IMAGE": "trainer:test",
            "AGPO_ROLLOUT_IMAGE": "rollout:test",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield World(cluster, progress)


class Operator:
    """The real kopf operator with agpo's handlers, in its own thread and event loop.

    Its own loop because kopf, when it stops, cancels every task created while it ran -- in a
    shared loop that includes the emulator's connection handlers. Restartable.
    """

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.memo: kopf.Memo | None = None

    async def start(self) -> Operator:
        ready = threading.Event()
        self.memo = kopf.Memo()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self._run, args=(ready,), name="operator", daemon=True
        )
        self.thread.start()
        if not await asyncio.to_thread(ready.wait, 10):
            pytest.fail("the operator did not start in 10 s")
        return self

    def _run(self, ready: threading.Event) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        operator = kopf.operator(
            clusterwide=True, standalone=True, memo=self.memo, ready_flag=ready
        )
        self.task = self.loop.create_task(operator)
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.task)
        self.loop.close()

    async def stop(self) -> None:
        if self.thread is None or self.loop is None or self.task is None:
            return
        self.loop.call_soon_threadsafe(self.task.cancel)
        await asyncio.to_thread(self.thread.join, 15)
        self.thread = self.loop = self.task = None


@pytest_asyncio.fixture()
async def operator(world: World) -> AsyncIterator[Operator]:
    op = await Operator().start()
    yield op
    await op.stop()
