"""Isolation of one job: its service account, its rollout token Secret, its NetworkPolicies.

vLLM's dev-mode endpoints (``/update_weights``, ``/collective_rpc``, ...) let whoever reaches a
rollout server replace the model. Two independent locks keep them closed:

* NetworkPolicies admit ingress to rollout pods only from the same job's trainer pods (and,
  optionally, the monitoring namespace on the HTTP port), and to trainer pods only from the
  job's own pods (plus the metrics port from the operator's and the monitoring namespace).
  They work only where the CNI enforces NetworkPolicy (Calico, Cilium, ...; not kindnet/flannel).
* A random per-job token in the Secret ``<job>-rollout-token``; the vLLM servers require it on
  every endpoint except ``/health`` and the trainer sends it. Pods get it via ``secretKeyRef``;
  the token value never appears in a pod spec, the ConfigMap or ``agpo render``.
"""

from __future__ import annotations

import base64

from agpo_api import AGPOJob
from agpo_api.layout import (
    NCCL_SYNC_PORTS,
    RENDEZVOUS_PORT,
    ROLLOUT_PORT,
    TOKEN_KEY,
)
from agpo_operator.builders.child import (
    FIRST,
    Child,
    Creation,
    Grant,
    Identity,
    Kind,
    created,
)
from agpo_operator.builders.common import (
    JOB_LABEL,
    ROLE_LABEL,
    BuildOptions,
    Names,
    Obj,
    metadata,
    selector_labels,
)

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
NETWORK_POLICY = Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")


def build_service_account(job: AGPOJob, n: Names, options: BuildOptions) -> Obj:
    """The identity of trainer and rollout pods: no Role is bound, no token is mounted."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(n, n.service_account, "workload"),
        "automountServiceAccountToken": False,
    }


def build_token_secret(job: AGPOJob, n: Names, options: BuildOptions, creation: Creation) -> Obj:
    """The Secret holding the rollout token; without a token it has no data (for rendering)."""
    token = creation.token
    secret: Obj = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(n, n.token_secret, "auth"),
        "type": "Opaque",
        "immutable": True,
    }
    if token is not None:
        secret["data"] = {TOKEN_KEY: base64.b64encode(token.encode()).decode()}
    return secret


def _tcp(port: int | str, end_port: int | None = None) -> Obj:
    out: Obj = {"protocol": "TCP", "port": port}
    if end_port is not None:
        out["endPort"] = end_port
    return out


def _ephemeral(options: BuildOptions) -> list[Obj]:
    """The port range NCCL/Gloo data connections use (they listen on ephemeral ports)."""
    if options.ephemeral_ports is None:
        return []
    low, high = options.ephemeral_ports
    return [_tcp(low, high)]


def _namespace_peer(namespace: str) -> Obj:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}


def _job_pods(n: Names) -> Obj:
    """This job's trainer and rollout pods (and nothing else in the namespace)."""
    return {
        "podSelector": {
            "matchLabels": {JOB_LABEL: n.job},
            "matchExpressions": [
                {"key": ROLE_LABEL, "operator": "In", "values": ["rollout", "trainer"]}
            ],
        }
    }


def build_rollout_network_policy(job: AGPOJob, n: Names, options: BuildOptions) -> Obj:
    """Rollout pods accept connections only from this job's trainer pods.

    The trainer calls the OpenAI and weight-update endpoints on port 8000 and its weight-sync
    group (NCCL/Gloo) opens data connections on ephemeral ports. The monitoring namespace, if
    configured, may reach port 8000 (vLLM serves ``/metrics`` there; the token still applies).
    """
    ingress: list[Obj] = [
        {
            "from": [{"podSelector": {"matchLabels": selector_labels(n.job, "trainer")}}],
            "ports": [_tcp(ROLLOUT_PORT), *_ephemeral(options)],
        }
    ]
    if options.monitoring_namespace:
        ingress.append(
            {"from": [_namespace_peer(options.monitoring_namespace)], "ports": [_tcp(ROLLOUT_PORT)]}
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(n, n.rollout, "network"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(n.job, "rollout")},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def build_trainer_network_policy(job: AGPOJob, n: Names, options: BuildOptions) -> Obj:
    """Trainer pods accept the rendezvous and weight-sync ports only from this job's pods.

    The metrics/status port is open to the operator's namespace (it polls ``/status``) and to
    the monitoring namespace, if configured.
    """
    sync_port = job.spec.rollout.weight_sync.port
    # nccl: one rendezvous store per server, on sync_port + i with i the lowest index free
    # (docs/weight-sync.md): the whole block, so a scaled pool needs no new policy (a rule
    # keeps replicas <= NCCL_SYNC_PORTS); gloo: one store for all of them.
    nccl = job.spec.rollout.weight_sync.backend == "nccl"
    sync_ports = _tcp(sync_port, sync_port + NCCL_SYNC_PORTS - 1) if nccl else _tcp(sync_port)
    metrics_port = job.spec.metrics.port
    metrics_from = [_namespace_peer(options.operator_namespace)]
    if options.monitoring_namespace and options.monitoring_namespace != options.operator_namespace:
        metrics_from.append(_namespace_peer(options.monitoring_namespace))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(n, n.trainer, "network"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(n.job, "trainer")},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [_job_pods(n)],
                    "ports": [_tcp(RENDEZVOUS_PORT), sync_ports, *_ephemeral(options)],
                },
                {"from": metrics_from, "ports": [_tcp(metrics_port)]},
            ],
        },
    }


# ---------------------------------------------------------------------- the children
SERVICE_ACCOUNT = created(
    Kind("v1", "ServiceAccount", "serviceaccounts"),
    build_service_account,
    lambda n: n.service_account,
    "the pods' service account (no API rights)",
    order=FIRST,
)
ROLLOUT_NETWORK_POLICY = created(
    NETWORK_POLICY,
    build_rollout_network_policy,
    lambda n: n.rollout,
    "per-job network isolation",
    order=FIRST,
)
TRAINER_NETWORK_POLICY = created(
    NETWORK_POLICY,
    build_trainer_network_policy,
    lambda n: n.trainer,
    "per-job network isolation",
    order=FIRST,
)
# Create only: the operator never reads a Secret; a deleted one shows in the pods
# (docs/reliability.md), so it is not looked for by the periodic check either.
TOKEN_SECRET = Child(
    kind=Kind("v1", "Secret", "secrets"),
    build=build_token_secret,
    name=lambda n: n.token_secret,
    grants=(Grant(("create",), "the rollout token (never read back)"),),
    identity=Identity.NAMED,
)
