"""Name -> function registries (verl ``core_algos`` style: ``register_adv_est``/``get_policy_loss_fn``).

Each registry maps a spec string (``algorithm.advantage``, ``algorithm.lossAggregation``...) to a
pure function. An unknown name raises ``ValueError`` listing the valid names, so a typo in a
spec fails with a message that says how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class Registry(Generic[F]):
    """A named collection of functions of one kind (e.g. "advantage estimator")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name``.

        Registering the same function twice is a no-op (modules may be re-imported); a
        different function under a taken name raises ``ValueError``.
        """

        def decorator(fn: F) -> F:
            existing = self._entries.get(name)
            if existing is not None and existing is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered ({existing!r})")
            self._entries[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> F:
        """Return the function registered under ``name``; ValueError listing valid names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
            ) from None

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries
