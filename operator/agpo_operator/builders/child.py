"""A child object as data: one :class:`Child` per object the operator creates for a job.

A child names its :class:`Kind` (apiVersion, kind, plural), its pure builder, the API verbs
the operator needs on it and why (:class:`Grant`), how long it lives (:class:`Lifetime`), when
it is created among the children of its lifetime (``order``), and how an existing object of
its name is known to be the job's own (:class:`Identity`). The :class:`Registry` of children
(``agpo_operator.builders.CHILDREN``) is the one table the rest reads: what each create and
delete action touches (``act``), what the periodic check for deleted children reads
(``loop``), the REST paths (``kube.path`` takes a :class:`Kind`), what ``agpo render``
prints, and the RBAC rules (``rbac``). Adding a child object is a builder with its ``Child``
and one line in that registry; the registry refuses a child whose grants lack a verb the
operator will use on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from agpo_api import API_VERSION, KIND, PLURAL, AGPOJob, AGPOJobSpec
from agpo_api.vocabulary import Reason
from agpo_operator.builders.common import BuildOptions, Names, Obj, names

#: The RBAC verbs, in the order a generated rule lists them.
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")

#: ``Child.order``: isolation and identity (NetworkPolicies, the ServiceAccount) exist before
#: anything else of the job; the rest comes after them.
FIRST, NEXT = 0, 1


@dataclass(frozen=True)
class Kind:
    """An API resource: ``apiVersion``, ``kind`` and the plural in its REST path."""

    api_version: str
    kind: str
    plural: str

    @property
    def group(self) -> str:
        """The API group (``""``: the core group of ``v1``)."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


@dataclass(frozen=True)
class Grant:
    """Verbs the operator needs on a kind (or one of its subresources), and why."""

    verbs: tuple[str, ...]
    why: str
    subresource: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.verbs) - set(VERBS)
        if unknown or not self.verbs:
            raise ValueError(f"verbs must be some of {VERBS}, got {self.verbs}")


class Lifetime(StrEnum):
    """When a child is created and removed; members in creation order."""

    STATIC = "static"  # with the job (CreateStatic), until it goes; recreated when deleted
    ROLLOUT = "rollout"  # with the vLLM servers (CreateRollout): removed while suspended, finished
    ATTEMPT = "attempt"  # one per trainer attempt (CreateTrainer): replaced on every restart


class Identity(StrEnum):
    """How the operator knows that an existing object of a child's name is the job's."""

    OWNED = "owned"  # read back after a 409: its controller is the job (or a retained claim)
    NAMED = "named"  # cannot be read (a Secret, by design): the name alone says it is the job's


@dataclass(frozen=True)
class OptionalApi:
    """An API group a child needs that a cluster may lack: the child is created only where the
    group is served; where it is not, a Warning (``reason``, ``message``) says so once."""

    group: str
    reason: Reason
    message: Callable[[AGPOJobSpec, Names], str]


@dataclass(frozen=True)
class Creation:
    """What differs between two builds of one job's children: the rollout token (generated
    when the operator creates them; None for ``agpo render``), the trainer attempt, and the
    vLLM servers the job's gang was admitted with (``gang_replicas``: the rollout.replicas of
    the spec it was created with; None: the spec's own, as at creation). A scaled gang job's
    spec asks for more servers than its gang holds: the gang's objects keep their size and the
    servers above it go in the extra StatefulSet (``builders.rollout``)."""

    token: str | None = None
    attempt: int = 0
    gang_replicas: int | None = None


Build = Callable[[AGPOJob, Names, BuildOptions, Creation], Obj | None]


def plain(build: Callable[[AGPOJob, Names, BuildOptions], Obj | None]) -> Build:
    """A builder that does not depend on the :class:`Creation` (most of them)."""

    def built(job: AGPOJob, n: Names, options: BuildOptions, creation: Creation) -> Obj | None:
        return build(job, n, options)

    return built


@dataclass(frozen=True)
class Child:
    """One child object: what it is, how it is built, what the operator does with it and why."""

    kind: Kind
    build: Build  # returns None where the job has no such child (an optional object)
    name: Callable[[Names], str]
    grants: tuple[Grant, ...]
    lifetime: Lifetime = Lifetime.STATIC
    order: int = NEXT  # among its lifetime's children: ascending, equal orders together
    identity: Identity = Identity.OWNED
    requires: OptionalApi | None = None

    def key(self, n: Names) -> str:
        """How actions and observations name it: ``Kind/name``."""
        return f"{self.kind.kind}/{self.name(n)}"

    def needs(self) -> frozenset[str]:
        """The verbs the operator's generic code uses on every child like this one."""
        verbs = {"create"}
        # A readable static child is read back after a 409 and by the periodic check for
        # deleted children. The workloads are read by a LIST every pass instead: a 409 on
        # creating one means a foreign object of its name, an error with or without ``get``.
        if self.identity is Identity.OWNED and self.lifetime is Lifetime.STATIC:
            verbs.add("get")
        if self.lifetime is not Lifetime.STATIC:
            verbs.add("delete")  # DeleteRollout / DeleteTrainer remove the whole lifetime
        return frozenset(verbs)


Built = tuple[Child, Obj]


@dataclass(frozen=True)
class Registry:
    """The children of a job, in creation order within each lifetime.

    Immutable: :meth:`with_child` returns a new registry (a test's own child leaves the
    operator's registry as it was).
    """

    children: tuple[Child, ...]

    def __post_init__(self) -> None:
        problems = [*_ungranted(self.children), *_plural_clashes(self.children)]
        if problems:
            raise ValueError("invalid child registry: " + "; ".join(problems))

    def with_child(self, child: Child) -> Registry:
        return Registry((*self.children, child))

    def of(self, lifetime: Lifetime) -> tuple[Child, ...]:
        """The children of one lifetime, by ``order`` (equal orders in registration order)."""
        return tuple(sorted((c for c in self.children if c.lifetime is lifetime),
                            key=lambda c: c.order))  # fmt: skip

    def kinds(self) -> tuple[Kind, ...]:
        return tuple(dict.fromkeys(c.kind for c in self.children))

    def grants(self) -> Iterator[tuple[Kind, Grant]]:
        for child in self.children:
            for grant in child.grants:
                yield child.kind, grant

    def build(self, lifetime: Lifetime, job: AGPOJob, namespace: str, options: BuildOptions,
              creation: Creation) -> list[Built]:  # fmt: skip
        """The objects of one lifetime's children for a job, in creation order."""
        n = names(job, namespace)
        built = ((c, c.build(job, n, options, creation)) for c in self.of(lifetime))
        return [(c, obj) for c, obj in built if obj is not None]


def waves(built: list[Built]) -> list[list[Built]]:
    """Built children grouped by ``order``, ascending: each group is created together."""
    orders = sorted({c.order for c, _ in built})
    return [[b for b in built if b[0].order == order] for order in orders]


#: A static child's ``get``: a 409's owner check and the periodic check for deleted children.
READ_BACK = Grant(("get",), "read back: after a 409 (is it the job's own?), and to find it deleted")


def created(
    kind: Kind,
    build: Callable[[AGPOJob, Names, BuildOptions], Obj | None],
    name: Callable[[Names], str],
    why: str,
    *more: Grant,
    order: int = NEXT,
    requires: OptionalApi | None = None,
) -> Child:
    """The common child: static, built without the :class:`Creation`, created for ``why`` and
    read back (:data:`READ_BACK`), with ``more`` grants if it needs them."""
    grants = (Grant(("create",), why), READ_BACK, *more)
    return Child(kind, plain(build), name, grants, order=order, requires=requires)


def _ungranted(children: tuple[Child, ...]) -> Iterator[str]:
    for child in children:
        granted = {v for g in child.grants if not g.subresource for v in g.verbs}
        if missing := child.needs() - granted:
            yield f"{child.kind.kind} ({child.lifetime}) needs {sorted(missing)} in its grants"


def _plural_clashes(children: tuple[Child, ...]) -> Iterator[str]:
    plurals: dict[tuple[str, str], str] = {}
    for child in children:
        k = child.kind
        if plurals.setdefault((k.api_version, k.kind), k.plural) != k.plural:
            yield f"{k.api_version} {k.kind} has two plurals"


# ------------------------------------------------------------- kinds shared or not children
#: The Services of the rollout, the trainer and rank 0's metrics (three builder modules).
SERVICE = Kind("v1", "Service", "services")
#: What the operator reads or writes besides its children (grants in ``agpo_operator.rbac``).
AGPOJOB = Kind(API_VERSION, KIND, PLURAL)
POD = Kind("v1", "Pod", "pods")
EVENT = Kind("v1", "Event", "events")
