"""Start and stop a vLLM OpenAI-compatible server as a child process.

The command line and environment come from the contract (`agpo_api.vllm_server`), the same
pure functions the operator puts into rollout pod specs; this module's `VLLMServer` runs them
locally (tests, single-machine runs). What they encode about vLLM 0.32 (module instead of
the `vllm` script, `VLLM_SERVER_DEV_MODE=1`, CPU memory flags) is in docs/weight-sync.md,
"For the operator"; the defaults below (float32, `--gpu-memory-utilization 0.3`, eager)
are those that start a tiny model on a small CPU machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psutil
import requests

from agpo_api.env import AUTH_ENV
from agpo_api.vllm_server import build_server_command, build_server_env


class ServerStartError(RuntimeError):
    """The vLLM server exited or did not become healthy in time."""


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies, even by SIGKILL (Linux).

    A child in its own session does not see the parent's terminal signals; without this a
    killed launcher would leave vLLM servers or torchrun running.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class VLLMServer:
    """A local vLLM server process (own session, so `stop()` reaps every child).

    Usage:
        with VLLMServer(model_dir, port=free_port(), token=tok, log_path=p) as server:
            server.wait_ready(180)
            ...
    """

    def __init__(
        self,
        model: str | Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        token: str | None = None,
        log_path: Path | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        max_model_len: int = 256,
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool = True,
        weight_transfer_backend: str | None = "gloo",
        seed: int = 0,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        stop_grace_s: float = 10.0,
    ) -> None:
        self.port = port or free_port()
        self.host = host
        self.token = token
        self.log_path = Path(log_path) if log_path else Path(f"vllm-{self.port}.log")
        self.stop_grace_s = stop_grace_s
        self.command = build_server_command(
            str(model),
            port=self.port,
            host=host,
            python=sys.executable,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            weight_transfer_backend=weight_transfer_backend,
            auth=True,
            seed=seed,
            cpu=device == "cpu",
            extra_args=extra_args,
        )
        # The auth variables come only from `token`, never from the parent environment,
        # so a stray AGPO_ROLLOUT_AUTH=disabled cannot silently open the server.
        inherited = {k: v for k, v in os.environ.items() if k not in AUTH_ENV}
        self.env = {**inherited, **build_server_env(token=token, device=device, extra=extra_env)}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> VLLMServer:
        if self.process is not None:
            raise RuntimeError("server already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own session = own process group: stop() signals the API server, the
                # engine core and every worker it spawned, leaving no orphans.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return self

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def healthy(self) -> bool:
        """One look at `/health` (for a caller that must not block)."""
        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Poll `/health` until 200; fail fast with the log tail if the process exits."""
        if self.process is None:
            raise RuntimeError("start() the server first")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(
                    f"vLLM server on port {self.port} exited with code {code} during "
                    f"startup; last log lines ({self.log_path}):\n{tail(self.log_path)}"
                )
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise ServerStartError(
            f"vLLM server on port {self.port} not healthy after {timeout_s:.0f}s; last log "
            f"lines ({self.log_path}):\n{tail(self.log_path)}"
        )

    def stop(self) -> int | None:
        """SIGTERM the whole process group, SIGKILL it after the grace period, and return
        once no process of the group is left (engine core and workers included)."""
        if self.process is None:
            return None
        return stop_process_group(self.process, self.stop_grace_s)

    def kill(self) -> None:
        """SIGKILL the whole group at once (tests of a server dying mid-run)."""
        if self.process is not None:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            _wait_group_gone(self.process.pid, 30)

    def __enter__(self) -> VLLMServer:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL, the group of `process` (a session leader: its pid is the
    group id); return its exit code once no process of the group is left."""
    pgid = process.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # Children may outlive the leader (engine core, workers): always sweep the group.
        _signal_group(pgid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    _wait_group_gone(pgid, grace_s)
    return process.returncode


def process_group_members(pgid: int) -> list[int]:
    """Live processes of a process group.

    psutil has no process-group query, hence `os.getpgid` per process. Zombies count as
    gone: their parent (often the dead API server) is no longer there to reap them, and
    a container's PID 1 may never do it, yet they hold no resources.
    """
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
        except (ProcessLookupError, PermissionError):  # gone since listed, or not ours
            continue
        if proc.info["status"] not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            members.append(proc.pid)
    return members


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    # A SIGKILLed child is reaped by init only after the kernel tore it down; wait for
    # that so "stopped" really means no process of the server is left. Not
    # psutil.wait_procs: it waits for a non-child zombie until the timeout.
    deadline = time.monotonic() + timeout_s
    while process_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
