"""I/O helpers: a small JSON client for the Kubernetes API, and the operator's login.

The official ``kubernetes`` client does the HTTP (its in-cluster configuration refreshes
projected service-account tokens); we use it untyped -- plain dicts in, plain dicts out -- so
the pure builders' output is sent as is. Its calls block, so they run in a bounded thread pool.
Every verb used here must be granted in :mod:`agpo_operator.rbac`. Calls name their resource
by a :class:`~agpo_operator.builders.child.Kind` (a child's, or the AGPOJob's, a Pod's), which
carries the plural of its REST path.

Why our own paths (each ``Kind`` knows its plural) and not the client's typed APIs
(``CoreV1Api``, ``AppsV1Api``, ``BatchV1Api``, ``CustomObjectsApi``) or ``kubernetes.dynamic``:
the typed APIs have one method per kind and verb (``create_namespaced_stateful_set``...), so
the one generic create/get/list/patch/delete over a dozen kinds would become a dispatch table
of method names anyway, and they deserialise answers into model objects (plain dicts need
``_preload_content=False`` and our own JSON parsing on every call); the CR and the PodMonitor
would still go through ``CustomObjectsApi``. ``kubernetes.dynamic`` reads the server's
discovery documents before the first call, which costs discovery requests (and their RBAC)
at every login, and builds the same kind-to-path table at run time. One ``path()`` for every
kind, with the merge-patch content type chosen here, stays smaller than either.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes.client
import kubernetes.config

from agpo_operator.builders.child import Kind
from agpo_operator.builders.common import label_selector

Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0: no response)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        self.status, self.reason, self.message = status, reason, message
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")


def path(
    kind: Kind,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a collection or an object (``/api/v1/namespaces/ns/pods/name``)."""
    root = "/api/v1" if kind.api_version == "v1" else f"/apis/{kind.api_version}"
    parts = [root]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(kind.plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def matches(labels: Mapping[str, str] | None, selector: Mapping[str, str]) -> bool:
    return all((labels or {}).get(k) == v for k, v in selector.items())


class Kube:
    """Async create/get/list/patch/delete of plain-dict objects."""

    def __init__(self, configuration: kubernetes.client.Configuration, *, workers: int = 16,
                 timeout: float = 30.0) -> None:  # fmt: skip
        configuration.connection_pool_maxsize = max(workers, 1)
        self._api = kubernetes.client.ApiClient(configuration)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        self._timeout = (5.0, timeout)

    def retire(self) -> None:
        """Stop taking calls; those queued or running finish."""
        self._pool.shutdown(wait=False)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._api.close)

    # ------------------------------------------------------------------ raw calls
    def _call(self, method: str, url: str, body: Any = None, content_type: str | None = None,
              query: list[tuple[str, str]] | None = None) -> Any:  # fmt: skip
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        request = self._api.param_serialize(
            method, url, query_params=query, header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )  # fmt: skip
        try:
            response = self._api.call_api(*request, _request_timeout=self._timeout)
            response.read()  # type: ignore[no-untyped-call]
        except Exception as err:  # connection refused, timeouts, TLS: no HTTP status
            raise ApiError(0, type(err).__name__, str(err)) from err
        data = response.data or b""
        if not 200 <= response.status < 300:
            try:
                status = json.loads(data)
                reason, message = status.get("reason", ""), status.get("message", "")
            except (ValueError, AttributeError):
                reason, message = response.reason or "", data[:200].decode(errors="replace")
            raise ApiError(response.status, reason, message)
        return json.loads(data) if data else None

    async def request(self, method: str, url: str, body: Any = None,
                      content_type: str | None = None,
                      query: list[tuple[str, str]] | None = None) -> Any:  # fmt: skip
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: self._call(method, url, body, content_type, query)
        )

    # ------------------------------------------------------------------ verbs
    async def create(self, kind: Kind, obj: Obj) -> Obj:
        """POST an object; raises ApiError (409 when it exists)."""
        url = path(kind, obj["metadata"].get("namespace"))
        created: Obj = await self.request("POST", url, obj)
        return created

    async def get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        try:
            obj: Obj = await self.request("GET", path(kind, namespace, name))
            return obj
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[Obj]:
        """Objects whose labels match (filtered here too, should a server ignore the selector)."""
        query = [("labelSelector", label_selector(labels))]
        result = await self.request("GET", path(kind, namespace), query=query)
        items: list[Obj] = (result or {}).get("items", [])
        return [i for i in items if matches(i.get("metadata", {}).get("labels"), labels)]

    async def patch(self, kind: Kind, namespace: str, name: str, patch: Any, *,
                    subresource: str | None = None,
                    content_type: str = MERGE_PATCH) -> Obj | None:  # fmt: skip
        """PATCH an object; None when it is gone."""
        try:
            url = path(kind, namespace, name, subresource)
            obj: Obj = await self.request("PATCH", url, patch, content_type)
            return obj
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def delete(self, kind: Kind, namespace: str, name: str, *,
                     propagation: str = "Foreground") -> bool:  # fmt: skip
        """DELETE an object (its dependents first, by default); False when it was gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        try:
            await self.request("DELETE", path(kind, namespace, name), body)
            return True
        except ApiError as err:
            if err.status == 404:
                return False
            raise

    async def api_groups(self) -> set[str]:
        """Names of the API groups the server serves (``GET /apis``; never a 404)."""
        result = await self.request("GET", "/apis")
        return {g.get("name", "") for g in (result or {}).get("groups", [])}


# ---------------------------------------------------------------------- login
def load_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account if there is one, else ``$KUBECONFIG`` / ``~/.kube/config``.

    ``$KUBECONFIG`` is read now, not when the kubernetes package was imported.
    """
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        config_file = os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.path.expanduser(config_file),
            client_configuration=configuration,
            persist_config=False,
        )
    return configuration


def connection_info(configuration: kubernetes.client.Configuration) -> Any:
    """kopf's ConnectionInfo for the same server and credentials (as kopf.login_via_client)."""
    import kopf

    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, header or None)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )
