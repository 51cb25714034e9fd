"""The study's PNG plots (matplotlib, Agg): one figure per question, every seed shown
(``study-*`` for the first edition, ``study2-*`` for the second).

* ``study-accuracy.png``: greedy eval accuracy (eval split) against generated completions;
* ``study-reasoning.png``: reasoning tokens of correct training completions against steps;
* ``study-zero-variance.png``: all-correct and all-wrong group fractions against steps;
* ``study-scratch.png``: scratch use of correct test answers per bit count (budget checkpoint).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from analysis import read_jsonl, test_at
from arms import ARMS, Budget

COLOURS = {
    "grpo": "tab:blue",
    "agpo": "tab:red",
    "mask": "tab:green",
    "resample": "tab:purple",
    "agpo-len": "tab:orange",
    "grpo-len": "tab:cyan",
    "agpo-len-all": "tab:brown",
    "grpo-preset": "tab:gray",
}
#: file-name prefix per edition (the first edition's plots stay in docs/images as history)
PREFIX = {1: "study", 2: "study2"}


def smooth(xs: list[float], w: int = 9) -> list[float]:
    h = w // 2
    return [statistics.fmean(xs[max(0, i - h) : i + h + 1]) for i in range(len(xs))]


def _runs(out: Path, b: Budget) -> dict[str, dict[int, Path]]:
    found: dict[str, dict[int, Path]] = {}
    for arm in ARMS:
        for s in b.all_seeds:
            d = out / f"{arm}-s{s}"
            if (d / "steps.jsonl").exists():
                found.setdefault(arm, {})[s] = d
    return found


def _legend(ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, Any] = {}
    for h, lab in zip(handles, labels, strict=True):
        seen.setdefault(lab, h)
    ax.legend(seen.values(), seen.keys(), fontsize=7)


def accuracy_plot(runs: dict[str, dict[int, Path]], b: Budget, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    for arm, by_seed in runs.items():
        for d in by_seed.values():
            ev = read_jsonl(d / "eval.jsonl")
            ax.plot([e["completions"] for e in ev], [100 * e["accuracy"] for e in ev],
                    color=COLOURS[arm], alpha=0.7, lw=1, label=arm)  # fmt: skip
    ax.axvline(b.completions, color="k", ls=":", lw=1)
    ax.set_xlabel("generated completions (training rollouts; resample rounds count)")
    ax.set_ylabel("greedy accuracy on the eval split (%)")
    ax.set_title("Eval accuracy vs generated completions (each line one seed; dotted: budget)")
    _legend(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reasoning_plot(runs: dict[str, dict[int, Path]], b: Budget, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for arm, by_seed in runs.items():
        for d in by_seed.values():
            st = read_jsonl(d / "steps.jsonl")
            x = [s["step"] for s in st]
            r = [s["reasoning_correct"] or 0.0 for s in st]
            f = [s["filler_correct"] or 0.0 for s in st]
            axes[0].plot(x, smooth(r), color=COLOURS[arm], alpha=0.7, lw=1, label=arm)
            axes[1].plot(x, smooth(f), color=COLOURS[arm], alpha=0.7, lw=1, label=arm)
    axes[0].set_title("reasoning tokens of correct completions (train batch)")
    axes[1].set_title("of which filler tokens")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("tokens (moving mean over 9 steps)")
    _legend(axes[0])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def zero_variance_plot(runs: dict[str, dict[int, Path]], b: Budget, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True, sharey=True)
    for arm, by_seed in runs.items():
        for d in by_seed.values():
            st = read_jsonl(d / "steps.jsonl")
            x = [s["step"] for s in st]
            axes[0].plot(x, smooth([s["all_correct"] for s in st]), color=COLOURS[arm],
                         alpha=0.7, lw=1, label=arm)  # fmt: skip
            axes[1].plot(x, smooth([s["all_wrong"] for s in st]), color=COLOURS[arm],
                         alpha=0.7, lw=1, label=arm)  # fmt: skip
    axes[0].set_title("all-correct groups (fraction of the step's batch)")
    axes[1].set_title("all-wrong groups")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].set_ylabel("fraction (moving mean over 9 steps)")
    _legend(axes[0])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scratch_plot(runs: dict[str, dict[int, Path]], b: Budget, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for arm, by_seed in runs.items():
        use: dict[int, list[float]] = {}
        tok: dict[int, list[float]] = {}
        for d in by_seed.values():
            buckets = test_at(d, "budget")["sampled"]["buckets"]
            for k, v in buckets.items():
                if v["correct"]:
                    use.setdefault(int(k), []).append(v["used_scratch"] / v["correct"])
                    tok.setdefault(int(k), []).append(v["reasoning"] / v["correct"])
        xs = sorted(use)
        axes[0].plot(xs, [statistics.fmean(use[x]) for x in xs], marker="o", ms=3,
                     color=COLOURS[arm], label=arm)  # fmt: skip
        axes[1].plot(xs, [statistics.fmean(tok[x]) for x in xs], marker="o", ms=3,
                     color=COLOURS[arm], label=arm)  # fmt: skip
    axes[0].set_title("scratch use of correct test answers (T=1, budget checkpoint)")
    axes[0].set_ylabel("fraction with scratch (mean over seeds)")
    axes[1].set_title("reasoning tokens of correct test answers")
    axes[1].set_ylabel("tokens (mean over seeds)")
    for ax in axes:
        ax.set_xlabel("bits (difficulty)")
    _legend(axes[0])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def all_plots(out: Path, b: Budget, images: Path) -> list[Path]:
    images.mkdir(parents=True, exist_ok=True)
    runs = _runs(out, b)
    pre = PREFIX[b.edition]
    return [
        accuracy_plot(runs, b, images / f"{pre}-accuracy.png"),
        reasoning_plot(runs, b, images / f"{pre}-reasoning.png"),
        zero_variance_plot(runs, b, images / f"{pre}-zero-variance.png"),
        scratch_plot(runs, b, images / f"{pre}-scratch.png"),
    ]
