"""kopf handlers: short delegates to :class:`agpo_operator.runtime.Runtime` (in ``memo.agpo``).

Imported by ``agpo_operator`` only when kopf is loaded (``kopf run -m agpo_operator`` or the
``agpo-operator`` command); nothing else imports kopf.

* one daemon per AGPOJob runs its reconcile loop (kopf cancels it when the job is deleted);
* watch events of AGPOJobs, and of the pods and Jobs the operator labelled, wake that loop;
* startup reads the configuration; login hands the same credentials to kopf and our client.

The event handlers are ``async`` so that they run in the event loop (kopf runs sync handlers
in threads, and the loops' wake-up events are not thread-safe).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from agpo_api import GROUP, PLURAL, VERSION
from agpo_operator.builders.common import JOB_LABEL, MANAGED_BY
from agpo_operator.runtime import Runtime

CHILD_LABELS: dict[str, Any] = {JOB_LABEL: kopf.PRESENT, "app.kubernetes.io/managed-by": MANAGED_BY}


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    memo.agpo = Runtime.start(settings)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.agpo.close()


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    return memo.agpo.login()  # type: ignore[no-any-return]


@kopf.on.probe(id="jobs")
def probe(memo: kopf.Memo, **_: Any) -> int:
    return memo.agpo.probe()  # type: ignore[no-any-return]


@kopf.daemon(
    GROUP, VERSION, PLURAL, id="reconcile", cancellation_backoff=5.0, cancellation_timeout=5.0
)
async def reconcile(
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    await memo.agpo.run_job(body, stopped, logger)


@kopf.on.event(GROUP, VERSION, PLURAL, id="job-event")
async def job_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.agpo.notify_job(body)


@kopf.on.event("v1", "pods", labels=CHILD_LABELS, id="pod-event")
async def pod_event(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.agpo.wake(namespace, labels.get(JOB_LABEL))


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS, id="trainer-event")
async def trainer_event(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    memo.agpo.wake(namespace, labels.get(JOB_LABEL))
