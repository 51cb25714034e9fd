"""metav1-style conditions and times in ``AGPOJob.status``: pure reads and one pure write.

A condition is ``{type, status, reason, message, lastTransitionTime, observedGeneration}``;
the status lists them in :class:`~agpo_api.vocabulary.ConditionType` order, so a reader (and
a diff of two statuses) sees them in a stable place.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from agpo_api.vocabulary import ConditionType, Reason

Obj = dict[str, Any]
#: Where each condition type sorts in ``status.conditions``.
CONDITION_RANK = {ctype.value: i for i, ctype in enumerate(ConditionType)}


def timestamp(t: dt.datetime) -> str:
    """metav1.Time: RFC 3339 in UTC, whole seconds."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def condition(status: Mapping[str, Any], ctype: ConditionType) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            return cond  # type: ignore[no-any-return]
    return None


def is_true(status: Mapping[str, Any], ctype: ConditionType) -> bool:
    cond = condition(status, ctype)
    return bool(cond and cond.get("status") == "True")


def set_condition(
    status: Obj,
    ctype: ConditionType,
    value: bool,
    reason: Reason,
    message: str,
    *,
    now: str,
    generation: int,
) -> bool:
    """Set one condition in ``status`` (metav1 semantics: ``lastTransitionTime`` moves only
    when the status flips). Returns whether the change is worth an Event: the status or the
    reason changed, and the condition is not just being initialised as False."""
    flag = "True" if value else "False"
    conds: list[Obj] = [dict(c) for c in status.get("conditions") or []]
    old = next((c for c in conds if c.get("type") == ctype), None)
    new: Obj = {
        "type": ctype.value,
        "status": flag,
        "reason": reason.value,
        "message": message,
        "lastTransitionTime": now,
        "observedGeneration": generation,
    }
    if old is not None and old.get("status") == flag:
        new["lastTransitionTime"] = old.get("lastTransitionTime", now)
    changed = old is None or old.get("status") != flag or old.get("reason") != reason
    conds = [c for c in conds if c.get("type") != ctype] + [new]
    rank = CONDITION_RANK
    status["conditions"] = sorted(conds, key=lambda c: rank.get(c["type"], len(rank)))
    return changed and (old is not None or value)
