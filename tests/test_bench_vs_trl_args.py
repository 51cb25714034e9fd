"""benchmarks/bench_vs_trl.py without running anything heavy: the parity check of its job, the
TRL settings derived from it, step-interval statistics, and the vLLM logits processor that
forces equal completion lengths. No timing is asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from agpo_api import load_job

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "benchmarks" / "jobs" / "tiny-trl-parity.yaml"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load("bench_vs_trl", ROOT / "benchmarks" / "bench_vs_trl.py")


def _job_with(tmp_path: Path, edit: dict[str, dict[str, object]]) -> Path:
    doc = yaml.safe_load(JOB.read_text())
    for section, fields in edit.items():
        doc["spec"][section].update(fields)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_shipped_job_is_mirrored_by_trl_settings(bench: ModuleType) -> None:
    spec = load_job(JOB).spec
    bench.check_parity(spec)  # raises when a setting has no TRL equivalent
    cfg = bench.trl_config(spec, steps=7, output_dir="/tmp/x")
    t, a = spec.training, spec.algorithm
    assert cfg["per_device_train_batch_size"] == t.prompts_per_step * a.group_size == 128
    assert cfg["gradient_accumulation_steps"] == 1
    assert cfg["num_generations"] == a.group_size
    # equal completion lengths: min = max on the TRL side, the vLLM processor on ours
    assert cfg["max_completion_length"] == t.max_completion_tokens == 16
    assert cfg["generation_kwargs"] == {"min_new_tokens": t.max_completion_tokens}
    assert bench.forced_length(spec.rollout.extra_args)
    assert (cfg["bf16"], cfg["fp16"], cfg["use_cpu"]) == (False, False, True)
    assert spec.model.dtype == "float32"
    assert (cfg["epsilon"], cfg["epsilon_high"]) == (a.clip.low, a.clip.high) == (0.2, 0.28)
    assert cfg["beta"] == 0.0 == a.kl_coefficient
    assert (cfg["learning_rate"], cfg["max_steps"]) == (t.learning_rate, 7)
    assert (cfg["temperature"], cfg["top_p"]) == (t.temperature, t.top_p)


def test_a_job_trl_cannot_mirror_is_refused_naming_each_field(
    bench: ModuleType, tmp_path: Path
) -> None:
    path = _job_with(
        tmp_path,
        {"training": {"formatWarmupSteps": 100}, "rollout": {"extraArgs": []}},
    )
    with pytest.raises(bench.SettingsError) as err:
        bench.check_parity(load_job(path).spec)
    message = str(err.value)
    assert "spec.training.formatWarmupSteps must be 0" in message
    assert "spec.rollout.extraArgs must load the logits processor" in message
    assert "zeroVariance" not in message  # only the broken rules are named


@pytest.mark.parametrize(
    ("args", "forced"),
    [
        (["--logits-processors", "bench_force_length:MinTokensIsMaxTokens"], True),
        (["--logits-processors=bench_force_length:MinTokensIsMaxTokens"], True),
        (["--logits-processors"], False),
        (["--enforce-eager", "bench_force_length:MinTokensIsMaxTokens"], False),
    ],
)
def test_forced_length_flag(bench: ModuleType, args: list[str], forced: bool) -> None:
    assert bench.forced_length(args) is forced


def test_steady_state_leaves_out_the_warmup_steps(bench: ModuleType) -> None:
    run = bench.RunResult(
        side="x",
        repeat=1,
        step_times=[10.0, 13.0, 14.0, 15.0, 15.5, 16.5],  # s after launch
        wall_s=20.0,
        load_before="",
        load_after="",
        lengths=(16, 16),
    )
    assert run.first_step == 10.0
    assert run.intervals(2) == [1.0, 1.0, 0.5, 1.0]  # steps 3-6
    assert run.steady(2) == 1.0
    assert run.intervals(0) == run.intervals(1) == [3.0, 1.0, 1.0, 0.5, 1.0]


def test_report_prints_the_goal_and_tokens_per_second_of_each_side(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = load_job(JOB).spec
    tokens = spec.training.prompts_per_step * spec.algorithm.group_size
    tokens *= spec.training.max_completion_tokens

    def run(side: str, step_s: float, gen_s: float) -> object:
        times = [5.0 + step_s * i for i in range(6)]
        phase = "rollout" if side == "ours" else "generate"
        return bench.RunResult(side, 1, times, 40.0, "", "", (16, 16), {phase: [gen_s] * 6})

    args = bench.build_parser().parse_args(["--steps", "6", "--repeats", "1", "--goal", "0.8"])
    bench.report(args, [run("trl", 4.0, 2.0), run("ours", 2.0, 0.5)])
    out = capsys.readouterr().out
    assert "ours/TRL 0.50x   (goal <= 0.8x)" in out
    assert (
        f"per step: ours {tokens / 2.0:.1f}   TRL {tokens / 4.0:.1f};   while generating: "
        f"ours {tokens / 0.5:.1f}   TRL {tokens / 2.0:.1f}"
    ) in out


def test_force_length_processor_masks_stop_tokens_until_max_tokens() -> None:
    pytest.importorskip("vllm")
    from vllm import SamplingParams

    module = _load("bench_force_length", ROOT / "benchmarks" / "jobs" / "bench_force_length.py")
    params = SamplingParams(max_tokens=3, stop_token_ids=[2])
    output: list[int] = [5]
    state = module.MinTokensIsMaxTokens.add_request(params, None, output)
    assert state is not None
    wanted, tokens, stops, structured = state
    assert (wanted, stops, structured) == (3, {2}, False)
    assert tokens is output  # vLLM's running list, so the processor sees new tokens
    assert module.MinTokensIsMaxTokens.add_request(params, None, [5, 6, 7]) is None


def test_trl_vllm_colocate_forces_the_length_through_vllm(bench: ModuleType) -> None:
    spec = load_job(JOB).spec
    cfg = bench.trl_config(spec, steps=3, output_dir="/tmp/x", generation="vllm-colocate")
    assert (cfg["use_vllm"], cfg["vllm_mode"]) == (True, "colocate")
    # vLLM's SamplingParams field, not transformers' min_new_tokens
    assert cfg["generation_kwargs"] == {"min_tokens": spec.training.max_completion_tokens}
    assert cfg["vllm_max_model_length"] == spec.rollout.max_model_len
