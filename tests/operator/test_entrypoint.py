"""`kopf run -m agpo_operator` registers the handlers; plain imports of the package do not."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_kopf_run_module_registers_handlers() -> None:
    # kopf imports itself before importing the -m module, as `kopf run -m agpo_operator` does
    code = (
        "import kopf, agpo_operator; r = kopf.get_default_registry(); "
        "print(sum(1 for _ in r._spawning.get_all_handlers()), "
        "sum(1 for _ in r._watching.get_all_handlers()))"
    )
    daemons, watchers = map(int, run(code).split())
    assert daemons >= 1 and watchers >= 1


def test_importing_the_package_alone_pulls_in_no_kopf() -> None:
    assert run("import sys, agpo_operator, agpo_api; print('kopf' in sys.modules)") == "False"
