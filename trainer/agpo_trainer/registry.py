"""Name -> function registries (verl ``core_algos`` style: ``register_adv_est``/``get_policy_loss_fn``).

Each registry maps a spec string (``algorithm.advantage``, ``algorithm.lossAggregation``...) to a
pure function and the traits the rest of the trainer asks about (does the loss need whole
groups? does the zero-variance policy resample?), so no caller tests a name. A registry is tied
to the contract's :class:`agpo_api.catalog.Catalog` of its kind: a shipped name takes the traits
the catalog declares for it (the spec's validation rules use the same ones where the trainer is
not installed); a new name declares its traits when it registers and is added to the catalog, so
a spec naming it validates in this process. An unknown name raises ``ValueError`` listing the
valid names, so a typo in a spec fails with a message that says how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from agpo_api.catalog import Catalog

F = TypeVar("F")  # a function, or a part object (a Task)
T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[F, T]):
    """A registered part: its function (or object) and what the contract knows of it."""

    name: str
    fn: F
    traits: T


class Registry(Generic[F, T]):
    """A named collection of functions of one kind (e.g. "advantage estimator")."""

    def __init__(self, kind: str, catalog: Catalog[T] | None = None) -> None:
        self.kind = kind
        self.catalog = catalog
        self._entries: dict[str, Entry[F, T]] = {}

    def register(self, name: str, *, traits: T | None = None) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name``.

        A name the catalog declares takes its traits there (``traits`` must then be None or
        equal); a new name must give ``traits`` (unless the registry has no catalog) and is
        added to the catalog. Registering the same function twice is a no-op (modules may be
        re-imported); a different function under a taken name raises ``ValueError``.
        """

        def decorator(fn: F) -> F:
            existing = self._entries.get(name)
            if existing is not None and existing.fn is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered ({existing.fn!r})")
            self._entries[name] = Entry(name, fn, self._declare(name, traits))
            return fn

        return decorator

    def _declare(self, name: str, traits: T | None) -> Any:
        if self.catalog is None:
            return traits
        if name in self.catalog:
            declared = self.catalog.traits(name)
            if traits is not None and traits != declared:
                raise ValueError(
                    f"{self.kind} {name!r} is declared in agpo_api.catalog with {declared!r}, "
                    f"not {traits!r}"
                )
            return declared
        if traits is None:
            raise ValueError(
                f"{self.kind} {name!r} is new: register it with traits=... (agpo_api.catalog)"
            )
        self.catalog.add(name, traits)
        return traits

    def entry(self, name: str) -> Entry[F, T]:
        """The entry registered under ``name``; ValueError listing valid names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
            ) from None

    def get(self, name: str) -> F:
        """The function registered under ``name``; ValueError listing valid names."""
        return self.entry(name).fn

    def traits(self, name: str) -> T:
        """The traits of the part registered under ``name``."""
        return self.entry(name).traits

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Registrations inside the block (here and in the catalog) are undone after it: a
        test registers its own parts without leaving them to the next test."""
        saved = dict(self._entries)
        if self.catalog is None:
            try:
                yield
            finally:
                self._entries = saved
            return
        with self.catalog.scope():
            try:
                yield
            finally:
                self._entries = saved
