"""kmock's KubernetesEmulator plus what a real API server does that kopf and the tests rely on.

The stock emulator stores bodies as POSTed. This subclass, like kube-apiserver:

* fills ``metadata.uid``, ``namespace`` (from the URL), ``creationTimestamp``, ``generation``
  and ``generateName``; bumps one global ``resourceVersion`` on every write and returns it
  from lists; a no-op patch writes nothing (no new version, no watch event);
* serves watches from the requested ``resourceVersion`` (no stale ADDED replays) without
  losing events between the snapshot and the live stream;
* gives ``/status`` subresource semantics (a status patch changes only ``status``; a main
  patch never changes ``status``) and bumps ``generation`` on other non-metadata changes;
* serves the ``/scale`` subresource of the resources in ``scales`` (an autoscaling/v1
  ``Scale`` mapped through the resource's paths, as a CRD's ``subresources.scale`` gives
  them; a patch of it changes only the spec's replicas);
* answers a failed JSON-patch ``test`` with 422 and a name conflict with 409;
* filters lists by equality label selectors;
* cascades deletions to objects whose ownerReferences name the deleted uid (the garbage
  collector, simplified: dependents go at once, whatever the propagation policy).

It records every response's status (``served``) so tests can assert on errors. Kubernetes
requests are served directly, not through kmock's DSL reactions (see ``_handle``).
Still missing (tests must not rely on them): schema validation, admission, optimistic
locking on updates, PUT, deletecollection, field selectors, set-based selectors, any
controller or kubelet.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
import string
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, dicts, enums, rendering

Obj = dict[str, Any]
_WRITES = frozenset({enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE})


@dataclass(frozen=True)
class Served:
    """One request and the status it got."""

    request: kmock.Request
    status: int
    at: float  # time.monotonic() when it arrived
    done: float  # time.monotonic() when it was answered

    @property
    def user_agent(self) -> str:
        return str(self.request.headers.get("User-Agent", ""))

    def __str__(self) -> str:
        return f"{self.request.method.value} {self.request.url.path_qs} -> {self.status}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _at(obj: Obj, path: str) -> Any:
    """The value at a ``.a.b`` path (None where it is missing)."""
    node: Any = obj
    for key in path.strip(".").split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _set_at(obj: Obj, path: str, value: Any) -> None:
    *parents, leaf = path.strip(".").split(".")
    for key in parents:
        obj = obj.setdefault(key, {})
    obj[leaf] = value


@dataclass(frozen=True)
class ScalePaths:
    """Where a resource keeps what its ``/scale`` subresource shows (a CRD's
    ``subresources.scale``; kube-apiserver's own mapping for StatefulSets)."""

    spec_replicas: str
    status_replicas: str
    selector: str | None = None

    @classmethod
    def of_crd(cls, scale: dict[str, str]) -> ScalePaths:
        return cls(scale["specReplicasPath"], scale["statusReplicasPath"],
                   scale.get("labelSelectorPath"))  # fmt: skip

    def view(self, obj: Obj) -> Obj:
        """The object as an autoscaling/v1 Scale."""
        meta = obj["metadata"]
        status: Obj = {"replicas": _at(obj, self.status_replicas) or 0}
        selector = _at(obj, self.selector) if self.selector else None
        if isinstance(selector, dict):  # a LabelSelector (a StatefulSet's spec.selector)
            selector = ",".join(f"{k}={v}" for k, v in selector.get("matchLabels", {}).items())
        if selector:
            status["selector"] = selector
        keep = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {k: meta[k] for k in keep if k in meta},
            "spec": {"replicas": _at(obj, self.spec_replicas)},
            "status": status,
        }


#: kube-apiserver's scale subresource of apps/v1 StatefulSets.
STATEFULSET_SCALE = ScalePaths(".spec.replicas", ".status.replicas", ".spec.selector")


def _selector(raw: str | None) -> dict[str, str]:
    out = {}
    for part in (raw or "").split(","):
        if "=" in part:
            k, _, v = part.partition("=")
            out[k.strip()] = v.strip().lstrip("=")
    return out


@attrs.define(kw_only=True)
class Cluster(kmock.KubernetesEmulator):
    """The emulator the operator tests and the benchmark run against."""

    gc: bool = True
    scales: dict[Any, ScalePaths] = attrs.field(factory=dict)  # by kmock resource
    _rv: int = attrs.field(default=0, init=False)
    served: list[Served] = attrs.field(factory=list, init=False)
    _arrivals: dict[int, float] = attrs.field(factory=dict, init=False)
    _created: dict[int, Any] = attrs.field(factory=dict, init=False)

    # ------------------------------------------------------------------ request log
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        self._arrivals[id(raw_request)] = time.monotonic()
        response = await super().__call__(raw_request)
        arrived = self._arrivals.pop(id(raw_request), time.monotonic())
        for request in reversed(self._requests):
            if request._raw_request is raw_request:
                self.served.append(Served(request, response.status, arrived, time.monotonic()))
                break
        return response

    # ------------------------------------------------------------------ writes
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    @property
    def resource_version(self) -> int:
        return self._rv

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if resource is None or resource.plural is None or request.action is None:
            return await apps.RawHandler._handle(self, request)  # discovery and the like
        gone = None
        if request.action in _WRITES:
            async with self._lock:
                gone = await self._write(request)
        try:
            # Served directly: kmock's DSL matches every request against the whole request log
            # (O(requests) each), which makes a 100-job run quadratic.
            serve = {
                enums.action.LIST: self._serve_list,
                enums.action.WATCH: self._serve_watch,
                enums.action.FETCH: self._serve_fetch,
                enums.action.CREATE: self._serve_create,
                enums.action.UPDATE: self._serve_current,
                enums.action.DELETE: self._serve_current,
            }[request.action]
            return await rendering.Response(payload=serve(request))(request)
        finally:
            if gone is not None:
                async with self._lock:
                    await self._remove(gone)

    async def _write(self, request: rendering.Request) -> Any:
        """Apply a create/patch/delete; returns the key of an object to remove afterwards."""
        if request.action == enums.action.CREATE:
            await self._create(request)
            return None
        key = (request.resource, request.namespace, request.name)
        if request.name is None:
            raise kmock.KubernetesError(status=405, reason="MethodNotAllowed", message="collection")
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        obj = self._objects[key]
        if request.action == enums.action.UPDATE:
            return await self._patch(request, key, obj)
        meta = obj.get("metadata", {})
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                new = copy.deepcopy(obj.raw)
                new["metadata"]["deletionTimestamp"] = _now()
                new["metadata"]["resourceVersion"] = self._next_rv()
                obj.history.append(new)
                await self._buses[request.resource].put({"type": "MODIFIED", "object": new})
            return None
        return key

    async def _create(self, request: rendering.Request) -> None:
        body = copy.deepcopy(request.data or {})
        meta = body.setdefault("metadata", {})
        if request.namespace:
            meta["namespace"] = request.namespace
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        if not meta.get("name"):
            raise kmock.KubernetesError(status=422, reason="Invalid", message="name is required")
        key = (request.resource, meta.get("namespace"), meta["name"])
        if key in self._objects and not self._objects[key].deleted:
            raise kmock.KubernetesError(
                status=409, reason="AlreadyExists", message=f"{meta['name']} already exists"
            )
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            resourceVersion=self._next_rv(),
            generation=1,
        )
        if key in self._objects:
            self._objects[key].create(body)
        else:
            self._objects[key] = body
        self._created[id(request)] = key
        await self._buses[request.resource].put({"type": "ADDED", "object": body})

    async def _patch(self, request: rendering.Request, key: Any, obj: kmock.Object) -> Any:
        old = copy.deepcopy(obj.raw)
        patch = request.data
        scale = self._scale(request)
        try:
            target = scale.view(old) if scale else old
            new = copy.deepcopy(dict(dicts.patch_dict(copy.deepcopy(target), patch)))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(err)) from None
        if scale is not None:  # only the replicas go through to the object
            replicas = (new.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                message = f"spec.replicas: Invalid value: {replicas!r}"
                raise kmock.KubernetesError(status=422, reason="Invalid", message=message)
            new = copy.deepcopy(old)
            _set_at(new, scale.spec_replicas, replicas)
        elif request.subresource == "status":
            new = {**old, "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif request.subresource is None:
            new.pop("status", None)
            if "status" in old:
                new["status"] = old["status"]
        new.setdefault("metadata", {})
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return None
        body_changed = {k: v for k, v in new.items() if k not in {"metadata", "status"}} != {
            k: v for k, v in old.items() if k not in {"metadata", "status"}
        }
        if body_changed:
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        obj.history.append(new)
        await self._buses[request.resource].put({"type": "MODIFIED", "object": new})
        meta = new["metadata"]
        return key if meta.get("deletionTimestamp") and not meta.get("finalizers") else None

    async def _remove(self, key: Any) -> None:
        obj = self._objects[key]
        if obj.deleted:
            return
        final = copy.deepcopy(obj.raw)
        final["metadata"]["resourceVersion"] = self._next_rv()
        obj.delete()
        await self._buses[key[0]].put({"type": "DELETED", "object": final})
        if not self.gc:
            return
        uid = final["metadata"].get("uid")
        for other_key, other in list(self._objects.items()):
            if other.deleted:
                continue
            refs = other.get("metadata", {}).get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                await self._remove(other_key)

    def _scale(self, request: rendering.Request) -> ScalePaths | None:
        """The scale mapping of a ``/scale`` request (404 for a resource without one)."""
        if request.subresource != "scale":
            return None
        if request.resource not in self.scales:
            raise kmock.KubernetesResourceNotFoundError()
        return self.scales[request.resource]

    # ------------------------------------------------------------------ reads
    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        key = self._created.pop(id(request))
        return copy.deepcopy(self._objects[key].raw)

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        key = (request.resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        scale = self._scale(request)
        obj = copy.deepcopy(self._objects[key].raw)
        return scale.view(obj) if scale else obj

    async def _serve_current(self, request: rendering.Request) -> rendering.Payload:
        """The object after a patch or a delete (its last state if it is gone now)."""
        key = (request.resource, request.namespace, request.name)
        scale = self._scale(request)
        obj = copy.deepcopy(self._objects[key].last.raw)
        return scale.view(obj) if scale else obj

    def _visible(self, request: rendering.Request) -> list[Obj]:
        selector = _selector(request.params.get("labelSelector"))
        out = []
        for (resource, namespace, _), obj in self._objects.items():
            if obj.deleted or resource != request.resource:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            labels = obj.get("metadata", {}).get("labels") or {}
            if all(labels.get(k) == v for k, v in selector.items()):
                out.append(obj.raw)
        return out

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = copy.deepcopy(self._visible(request))
        return {
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # start streaming now, even if nothing happens
        assert request.resource is not None
        since = int(request.params.get("resourceVersion") or 0)
        bus = self._buses[request.resource]
        async with self._lock:
            mark = await bus.mark()  # events after the snapshot are queued for us
            snapshot = [
                o for o in self._visible(request) if int(o["metadata"]["resourceVersion"]) > since
            ]
        try:
            for obj in snapshot:
                yield {"type": "ADDED", "object": copy.deepcopy(obj)}
            async for event in bus.stream(since=mark):
                obj = event.get("object", {})
                meta = obj.get("metadata", {})
                if int(meta.get("resourceVersion") or 0) <= since:
                    continue
                if request.namespace is not None and meta.get("namespace") != request.namespace:
                    continue
                yield copy.deepcopy(event)
        finally:
            await bus.unmark(mark)
