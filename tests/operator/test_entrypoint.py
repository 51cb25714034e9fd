"""The documented entry points: `kopf run -m agpo_operator` serves jobs; a plain import of the
package (the CLI, the trainer image) does not pull kopf in."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from operator_support import World, eventually, sample


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@contextmanager
def process(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process with the test's environment (the world fixture's KUBECONFIG and AGPO_*)."""
    proc = subprocess.Popen(args, env=dict(os.environ), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield proc
    finally:
        proc.kill()  # the test is done with it: nothing to stop gracefully
        proc.wait(timeout=15)


@pytest.mark.slow
async def test_kopf_run_module_serves_jobs(world: World) -> None:
    # kopf imports itself before the -m module: agpo_operator then registers its handlers.
    command = (sys.executable, "-m", "kopf", "run", "-m", "agpo_operator", "--standalone",
               "--all-namespaces")  # fmt: skip
    with process(*command) as proc:
        await world.create_job(sample(name="cli"))

        def created() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the operator exited with {proc.returncode}")
            return world.condition("cli", "Created").get("status") == "True"

        await eventually(created, timeout=60, what="the children made by `kopf run -m ...`")
        assert world.get("jobs", "cli-trainer") and world.get("statefulsets", "cli-rollout")
    assert world.errors() == [] and world.forbidden() == []


def test_importing_the_package_alone_pulls_in_no_kopf() -> None:
    assert run("import sys, agpo_operator, agpo_api; print('kopf' in sys.modules)") == "False"
