"""The SmolLM2 learning runs' figures for docs/results.md: a plot of the held-out evaluations and
the training steps, and greedy completions of three fixed eval prompts before and after.

    python study/smollm2_report.py plot RUN_DIR[=LABEL] ... --out docs/images/smollm2-run.png
    python study/smollm2_report.py completions JOB RUN_DIR

``RUN_DIR`` is an ``agpo run`` workdir (``logs/trainer.log``, ``checkpoints/``). "Before" is
the policy of step 0: the model after the job's format warm-up (loaded from the warm-up cache,
``AGPO_CACHE_DIR``); "after" is the run's last checkpoint. Completions are greedy, through the
job's own prompt encoding (system prompt, chat template) and the in-process sampler; the three
prompts are the first eval-split prompts of buckets 1, 4 and 6 (easy, middle, hard).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

LINE = re.compile(r" (step|eval) (\{.*\})\s*$")


def records(run: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(step records, eval records) of a run's trainer log."""
    steps, evals = [], []
    for line in (run / "logs" / "trainer.log").read_text(errors="replace").splitlines():
        m = LINE.search(line)
        if m:
            (steps if m.group(1) == "step" else evals).append(json.loads(m.group(2)))
    return steps, evals


def smooth(values: list[float], window: int) -> list[float]:
    """The moving mean of ``window`` consecutive values."""
    return [sum(values[i - window + 1 : i + 1]) / window for i in range(window - 1, len(values))]


def plot(runs: list[tuple[Path, str]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, (run, label) in enumerate(runs):
        color = f"C{i}"  # one colour per run across the three panels
        steps, evals = records(run)
        x = [e["step"] for e in evals]
        axes[0].plot(x, [e["accuracy"] for e in evals], "o-", color=color, label=f"{label} greedy")
        axes[0].plot(x, [e["meanAtK"] for e in evals], "s--", color=color, label=f"{label} mean@4")
        axes[1].plot(x, [e["reasoningTokens"] for e in evals], "o-", color=color, label=label)
        window = 5  # a moving mean: one step's 64 completions are noisy
        xs = [s["step"] for s in steps][window - 1 :]
        acc = [s["accuracy"] for s in steps]
        toks = [s["completionTokensMean"] for s in steps]

        axes[2].plot(xs, smooth(acc, window), color=color, label=f"{label} accuracy")
        axes[2].plot(
            xs,
            [t / 100 for t in smooth(toks, window)],
            ":",
            color=color,
            label=f"{label} tokens / 100",
        )
    axes[0].set(title="held-out eval: accuracy (96 prompts)", xlabel="step", ylim=(0, 1))
    axes[1].set(title="reasoning tokens of correct greedy answers", xlabel="step")
    axes[2].set(title="training batches (moving mean of 5 steps)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def completions(job_file: Path, run: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agpo_api import load_job
    from agpo_api.resolved import resolve
    from agpo_trainer.checkpoint import latest_checkpoint
    from agpo_trainer.models import resolve_model_path
    from agpo_trainer.prompts import PromptEncoder
    from agpo_trainer.rollout.inprocess import InProcessBackend
    from agpo_trainer.tasks import get_task
    from agpo_trainer.warmup import cache_key

    spec = resolve(load_job(job_file).spec)
    assert spec.dataset.source.builtin is not None
    task = get_task(spec.dataset.source.builtin.task)
    cache = Path(os.environ.get("AGPO_CACHE_DIR", Path.home() / ".cache" / "agpo"))
    base = Path(resolve_model_path(spec.model.name, cache))
    tok = AutoTokenizer.from_pretrained(base)
    encode = PromptEncoder(tok, spec.dataset)
    assert task.eval_rows is not None
    rows = task.eval_rows(600)
    chosen = [next(r for r in rows if task.difficulty(r["prompt"]) == b) for b in (1, 4, 6)]

    def show(title: str, model: Any) -> None:
        model.eval()
        server = InProcessBackend(model, tok)
        ids = [encode(r["prompt"]) for r in chosen]
        outs = server.generate(
            ids, n=1, max_tokens=spec.training.max_completion_tokens, temperature=0.0
        )
        print(f"\n### {title}\n")
        for r, c in zip(chosen, outs, strict=True):
            right = task.grade(r["prompt"], c.text, r["answer"], not c.truncated)
            print(f"Q (bucket {task.difficulty(r['prompt'])}, answer {r['answer']}): {r['prompt']}")
            print(f"A ({len(c.token_ids)} tokens, {'right' if right else 'wrong'}):")
            print("```\n" + c.text + "\n```")

    torch.manual_seed(0)
    before = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    recipe = task.warmup
    steps = spec.training.format_warmup_steps
    if recipe is not None and steps:
        cached = cache / "warmup" / f"{task.name}-{cache_key(spec, recipe, steps)}.safetensors"
        before.load_state_dict(load_file(str(cached)), strict=False)
    show("before (step 0: after the format warm-up)", before)
    final = latest_checkpoint(run / "checkpoints")
    if final is None:
        sys.exit(f"no checkpoint in {run / 'checkpoints'}")
    show(f"after ({final.name})", AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plot")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("completions")
    c.add_argument("job", type=Path)
    c.add_argument("run", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "plot":
        runs = []
        for spec in args.runs:
            path, _, label = spec.partition("=")
            runs.append((Path(path), label or Path(path).name))
        plot(runs, args.out)
    else:
        completions(args.job, args.run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
