"""The local vLLM server's command line and process handling, without starting vLLM.

No torch at import time (see conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from agpo_trainer.rollout.server import (
    build_server_command,
    build_server_env,
    process_group_members,
    stop_process_group,
)


def test_build_server_command_is_pure_and_has_the_rl_flags() -> None:
    kwargs: dict[str, Any] = {"port": 8001, "dtype": "float32", "enforce_eager": True}
    cmd = build_server_command("/models/m", **kwargs)
    assert cmd == build_server_command("/models/m", **kwargs)
    assert cmd[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert flags["--model"] == "/models/m" and flags["--port"] == "8001"
    assert json.loads(cmd[cmd.index("--weight-transfer-config") + 1]) == {"backend": "gloo"}
    assert cmd[cmd.index("--middleware") + 1] == "agpo_rollout.auth.TokenAuthMiddleware"
    assert "--enforce-eager" in cmd
    env = build_server_env(token="t0k")
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and env["AGPO_ROLLOUT_TOKEN"] == "t0k"
    assert "AGPO_ROLLOUT_AUTH" not in env
    assert build_server_env(token=None)["AGPO_ROLLOUT_AUTH"] == "disabled"


def test_stopping_a_group_leaves_no_process_of_it() -> None:
    # A leader with two children, like vLLM's API server with its engine core and worker;
    # the children ignore SIGTERM, so only the SIGKILL sweep of the group ends them.
    script = "trap '' TERM; sleep 60 & sleep 60 & wait"
    leader = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(process_group_members(leader.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(process_group_members(leader.pid)) == 3
    assert stop_process_group(leader, grace_s=0.5) is not None
    assert process_group_members(leader.pid) == []
