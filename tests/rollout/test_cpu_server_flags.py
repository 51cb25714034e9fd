"""CPU vLLM servers run without chunked prefill, GPU ones keep it (no vLLM started here).

Why: vLLM 0.32 rewinds the seeded generator of a request whose prefill was chunked, which a
CPU generator refuses (``CPU Generator does not use offset``) and the engine dies; the real
server test is test_vllm_seeded_prefill.py. No torch at import time (see conftest.py).
"""

from __future__ import annotations

from pathlib import Path

from agpo_api.validation import load_job
from agpo_api.vllm_server import NO_CHUNKED_PREFILL, job_server_command
from agpo_trainer.rollout.server import VLLMServer

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def test_rollout_pods_on_cpu_disable_chunked_prefill_and_gpu_pods_keep_it() -> None:
    cpu = load_job(SAMPLES / "tiny-cpu.yaml").spec
    gpu = load_job(SAMPLES / "qwen-math-gpu.yaml").spec
    assert cpu.rollout.gpus_per_replica == 0 and gpu.rollout.gpus_per_replica > 0
    assert NO_CHUNKED_PREFILL in job_server_command(cpu, "/model")
    assert NO_CHUNKED_PREFILL not in job_server_command(gpu, "/model")


def test_local_servers_follow_their_device(tmp_path: Path) -> None:
    def command(device: str) -> list[str]:
        return VLLMServer(tmp_path, port=8001, device=device, log_path=tmp_path / "l").command

    assert NO_CHUNKED_PREFILL in command("cpu")
    assert NO_CHUNKED_PREFILL not in command("cuda")
