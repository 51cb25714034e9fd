"""The dependency rule of docs/architecture.md holds, and its check can fail.

The rule is import-linter's contracts in pyproject.toml (``[tool.importlinter]``): the contract
package ``agpo_api`` imports no part of the project and no torch/kopf; the operator imports
neither the trainer nor the rollout plugin nor torch; the trainer never imports the operator.
grimp reads every import statement, also the ones inside functions, so a lazy
``from agpo_trainer import ...`` in the operator breaks the build as much as a top-level one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="needs import-linter (the test extra)")

ROOT = Path(__file__).resolve().parents[1]
# Source folder of each top-level package (setuptools' package roots in pyproject.toml).
SOURCES = {
    "agpo_api": "api",
    "agpo_cli": "cli",
    "agpo_operator": "operator",
    "agpo_rollout": "rollout",
    "agpo_trainer": "trainer",
}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the packages under ``root`` with ``root``'s pyproject.toml."""
    path = os.pathsep.join(str(root / folder) for folder in sorted(set(SOURCES.values())))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_tree(dest: Path) -> Path:
    """A copy of the packages and the pyproject.toml, to break on purpose."""
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for package, folder in SOURCES.items():
        shutil.copytree(ROOT / folder / package, dest / folder / package, ignore=ignore)
    return dest


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# (file to edit, code appended, the violation import-linter must report)
VIOLATIONS = {
    "operator imports the trainer": (
        "operator/agpo_operator/builders/common.py",
        "import agpo_trainer.data\n",
        "agpo_operator is not allowed to import agpo_trainer",
    ),
    "operator imports torch": (
        "operator/agpo_operator/builders/common.py",
        "import torch\n",
        "agpo_operator is not allowed to import torch",
    ),
    "operator imports the trainer lazily": (
        "operator/agpo_operator/render.py",
        "def _late():\n    from agpo_trainer import launcher\n\n    return launcher\n",
        "agpo_operator is not allowed to import agpo_trainer",
    ),
    "operator imports the rollout plugin": (
        "operator/agpo_operator/render.py",
        "import agpo_rollout\n",
        "agpo_operator is not allowed to import agpo_rollout",
    ),
    "trainer imports the operator": (
        "trainer/agpo_trainer/data.py",
        "from agpo_operator import builders\n",
        "agpo_trainer is not allowed to import agpo_operator",
    ),
    "contract imports kopf": (
        "api/agpo_api/env.py",
        "import kopf\n",
        "agpo_api is not allowed to import kopf",
    ),
    "contract imports the trainer": (
        "api/agpo_api/progress.py",
        "import agpo_trainer\n",
        "agpo_api is not allowed to import agpo_trainer",
    ),
    "rollout plugin imports the trainer": (
        "rollout/agpo_rollout/auth.py",
        "from agpo_trainer import launcher\n",
        "agpo_rollout is not allowed to import agpo_trainer",
    ),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_a_forbidden_import_breaks_its_contract(case: str, tmp_path: Path) -> None:
    file, line, message = VIOLATIONS[case]
    root = copy_tree(tmp_path)
    target = root / file
    target.write_text(target.read_text() + "\n\n" + line)
    result = lint_imports(root)
    assert result.returncode != 0, result.stdout
    # Indirect imports count too (the trainer imports agpo_api, so kopf in agpo_api breaks the
    # trainer's contract as well): check the one violation each case must produce.
    assert f"{message}:" in result.stdout, result.stdout


def test_operator_and_contract_import_without_torch_or_vllm() -> None:
    """Every module of the operator and the contract imports with torch, transformers and vLLM
    made unimportable (the operator image has none of them)."""
    code = """
import importlib, pkgutil, sys
for blocked in ("torch", "transformers", "vllm", "agpo_trainer", "agpo_rollout"):
    sys.modules[blocked] = None  # import raises ImportError
import agpo_api, agpo_operator
for package in (agpo_api, agpo_operator):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name == "agpo_operator.handlers":
            continue  # registers kopf handlers on import; imported by kopf run only
        importlib.import_module(info.name)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_test_modules_have_unique_names() -> None:
    """pytest imports test modules by basename (no packages under tests/): two files with one
    name in different folders fail the whole collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
