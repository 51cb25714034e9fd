"""Where the trainer finds its rollout servers: read again at every step boundary, so the pool
can grow and shrink while the job runs (``AGPO_ROLLOUT_DISCOVERY``).

* ``dns://HOST:PORT``: every address the name ``HOST`` resolves to, as ``http://ADDR:PORT``.
  In a pod ``HOST`` is the rollout pods' headless Service, whose DNS answer lists one address
  per pod. DNS, not the Kubernetes API: the trainer needs no Role to find its servers, and it
  probes each address before joining it (the Service publishes not-ready pods too).
* ``file:///PATH``: one URL per line (``#`` comments and blank lines ignored); what
  ``agpo run`` writes as local servers come and go (``agpo scale``).
* unset: the fixed ``AGPO_ROLLOUT_URLS``.

A source that cannot be read (no such name, no file yet) lists no server; the pool keeps
the servers it has and tries again at the next boundary.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit


class DiscoveryError(ValueError):
    """``AGPO_ROLLOUT_DISCOVERY`` is malformed; the message says how to write it."""


class Discovery(Protocol):
    """The rollout servers' URLs as of now."""

    def urls(self) -> list[str]: ...


@dataclass(frozen=True)
class StaticDiscovery:
    """A fixed list (``AGPO_ROLLOUT_URLS``)."""

    fixed: tuple[str, ...]

    def urls(self) -> list[str]:
        return list(self.fixed)


@dataclass(frozen=True)
class FileDiscovery:
    """One URL per line of ``path``, read on every call."""

    path: Path

    def urls(self) -> list[str]:
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            return []
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        # only what the rollout client can call: a stray line is not a server
        urls = (u.rstrip("/") for u in lines if u.startswith(("http://", "https://")))
        return list(dict.fromkeys(urls))


def _http(address: str, port: int) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"http://{host}:{port}"


@dataclass(frozen=True)
class DnsDiscovery:
    """Every address of ``host`` (a headless Service), sorted so the order is stable."""

    host: str
    port: int

    def urls(self) -> list[str]:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):  # no ready pod yet, or the name is gone
            return []
        addresses = sorted({str(info[4][0]) for info in infos})
        return [_http(a, self.port) for a in addresses]


def _dns(rest: str) -> Discovery:
    how = f"dns://{rest}: write dns://HOST:PORT (a headless Service; PORT 1-65535)"
    try:
        parts = urlsplit(f"//{rest}")
        port = parts.port  # raises for a port that is not a number or out of range
    except ValueError:
        raise DiscoveryError(how) from None
    extra = parts.username or parts.password or parts.query or parts.fragment
    if not parts.hostname or not port or parts.path not in ("", "/") or extra:
        raise DiscoveryError(how)
    return DnsDiscovery(parts.hostname, port)


def _file(rest: str) -> Discovery:
    if not rest.startswith("/"):
        raise DiscoveryError(f"file://{rest}: write file:///ABSOLUTE/PATH")
    return FileDiscovery(Path(rest))


#: ``scheme -> parser`` of what follows ``scheme://``.
SCHEMES: dict[str, Callable[[str], Discovery]] = {"dns": _dns, "file": _file}


def discovery_from(uri: str | None, urls: Sequence[str] = ()) -> Discovery:
    """The source ``AGPO_ROLLOUT_DISCOVERY`` names, else the fixed ``urls``."""
    if not uri:
        return StaticDiscovery(tuple(u.rstrip("/") for u in urls))
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES:
        raise DiscoveryError(
            f"AGPO_ROLLOUT_DISCOVERY={uri!r}: use one of "
            + ", ".join(f"{s}://..." for s in SCHEMES)
        )
    return SCHEMES[scheme](rest)


__all__ = [
    "SCHEMES",
    "Discovery",
    "DiscoveryError",
    "DnsDiscovery",
    "FileDiscovery",
    "StaticDiscovery",
    "discovery_from",
]
