"""Write (or, with ``--check``, verify) every generated file from its one source.

``make generate`` runs ``python -m agpo_operator.generate``; ``make verify`` and a test run it
with ``--check``, which fails when a checked-in copy drifts from its source.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from agpo_operator.api.crd import crd_yaml

ROOT = Path(__file__).resolve().parents[2]

# path (relative to the repository root) -> function producing its text
GENERATED: dict[str, Callable[[], str]] = {
    "manifests/crd/agpo.dev_agpojobs.yaml": crd_yaml,
    "charts/agpo-operator/crds/agpo.dev_agpojobs.yaml": crd_yaml,
}


def drifted(root: Path = ROOT) -> list[str]:
    """The generated files whose checked-in text differs from what their source produces."""
    out = []
    for rel, produce in GENERATED.items():
        path = root / rel
        if not path.exists() or path.read_text(encoding="utf-8") != produce():
            out.append(rel)
    return out


def write_all(root: Path = ROOT) -> list[str]:
    """Rewrite every generated file; returns the paths written."""
    for rel, produce in GENERATED.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(produce(), encoding="utf-8")
    return list(GENERATED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a generated file drifted")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        for rel in stale:
            print(f"{rel}: out of date; run `make generate`", file=sys.stderr)
        return 1 if stale else 0
    for rel in write_all():
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
