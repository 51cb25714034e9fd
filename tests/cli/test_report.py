"""`agpo report`: the charts chosen from a run's records, the self-contained page, one clear line
for each user mistake, the report at the end of `agpo run`, and a real run's report rendered in
a headless browser.

The real run's records (tests/cli/data/records-tiny-cpu-20.jsonl) are copied unchanged from
`agpo run manifests/samples/tiny-cpu.yaml --steps 20` on a 2-core CPU machine (evaluations at
steps 0 and 20); docs/images/report-tiny.png is from the same run.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest

from agpo_api.metrics_table import METRICS, Metric
from agpo_api.records import RECORDS_FILE, read_records, record_line
from agpo_cli.main import main
from agpo_cli.report import build, report_for
from agpo_cli.report.charts import covered, fixed_charts, other_charts, time_bands

from agpo_testlib import ROOT, SAMPLES

REAL_RECORDS = Path(__file__).parent / "data" / "records-tiny-cpu-20.jsonl"
FIXED = ["reward", "eval", "tokens", "groups", "time", "sync", "versions"]


# --------------------------------------------------------------------------- synthetic records
def step(n: int, **extra: Any) -> dict[str, Any]:
    """A step record with the figures the fixed charts read (and a few they do not)."""
    return {
        "step": n,
        "totalSteps": 3,
        "policyVersion": n,
        "rolloutPolicyVersion": n - 1,
        "batchStaleness": 0,
        "rewardMean": 0.5 + 0.1 * n,
        "accuracy": 0.4 + 0.1 * n,
        "rewardComponentMean": {"accuracy": 0.4 + 0.1 * n, "length": 0.02},
        "zeroVarianceFraction": 0.3,
        "completionTokensMean": 20.0 - n,
        "correctCompletionTokensMean": 18.0 - n,
        "correctReasoningTokensMean": None if n == 1 else 8.0 - n,  # step 1: none correct
        "allCorrectFraction": 0.1 * n,
        "allWrongFraction": 0.2,
        "loss": -0.1 * n,
        "rolloutTrainerKl": None,  # off: never a chart
        "stepSeconds": 2.0,
        "rolloutSeconds": 0.6,
        "rewardSeconds": 0.1,
        "trainSeconds": 0.8,
        "weightSyncSeconds": 0.2,
        "prompts": [3, 1, 4],
        **extra,
    }


def evaluation(n: int) -> dict[str, Any]:
    return {
        "step": n,
        "policyVersion": n,
        "prompts": 128,
        "samples": 4,
        "evalStep": n,
        "evalAccuracy": 0.5 + 0.05 * n,
        "evalMeanAtK": 0.4,
        "evalPassAtK": 0.7,
        "evalReasoningTokens": 6.0,
        "evalSeconds": 5.0,
    }


def write_records(
    where: Path,
    steps: list[dict[str, Any]],
    evals: Sequence[dict[str, Any]] = (),
    job: str = "tiny",
) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    header = {"job": job, "spec": {"training": {"steps": 3}}, "versions": {"agpo": "0.1.0"}}
    lines = [record_line("run", header)]
    lines += [record_line("step", s) for s in steps]
    lines += [record_line("eval", e) for e in evals]
    path = where / RECORDS_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def section_of(page: str, anchor: str) -> str:
    """The HTML of the chart section or small figure whose id is ``anchor``."""
    found = re.search(rf'<(section|figure) [^>]*?id="{anchor}".*?</\1>', page, re.S)
    if found is None:  # a fixed chart's id is on its heading, inside the section
        found = re.search(rf'<section [^>]*>\s*<h2 id="{anchor}">.*?</section>', page, re.S)
    assert found is not None, f"no section {anchor}"
    return found.group(0)


def pngs(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


# --------------------------------------------------------------------------- the builders
def test_fixed_charts_cover_the_issue_figures(tmp_path: Path) -> None:
    run = read_records(write_records(tmp_path, [step(1), step(2), step(3)], [evaluation(0)]))
    charts = fixed_charts(run)
    assert [c.name for c in charts] == FIXED
    assert not any(c.empty for c in charts)
    shown = covered(charts)
    for key in ("rewardMean", "accuracy", "evalAccuracy", "evalMeanAtK", "correctReasoningTokensMean",
                "correctCompletionTokensMean", "completionTokensMean", "evalReasoningTokens",
                "allCorrectFraction", "allWrongFraction", "rolloutSeconds", "rewardSeconds",
                "trainSeconds", "weightSyncSeconds", "stepSeconds", "batchStaleness",
                "rolloutPolicyVersion", "policyVersion"):  # fmt: skip
        assert key in shown, key
    tokens = {line.label: line for line in charts[FIXED.index("tokens")].panels[0].lines}
    # the step without a correct completion is left out, not drawn as 0
    assert tokens["correctReasoningTokensMean"].xs == (2, 3)
    assert tokens["correctReasoningTokensMean"].ys == (6.0, 5.0)
    assert tokens["evalReasoningTokens"].xs == (0,)


def test_time_bands_fold_scoring_into_rollout_and_floor_other() -> None:
    assert time_bands(step(1)) == pytest.approx(
        {"rollout": 0.7, "train": 0.8, "push": 0.2, "other": 0.3}
    )
    # a prefetched batch (maxStaleness 1) was generated during the previous update
    overlapped = step(1, stepSeconds=1.0, rolloutSeconds=0.9)
    assert time_bands(overlapped)["other"] == 0.0


def test_other_charts_are_the_remaining_table_rows_with_data(tmp_path: Path) -> None:
    run = read_records(write_records(tmp_path, [step(1), step(2)], [evaluation(0), evaluation(2)]))
    shown = covered(fixed_charts(run))
    names = [c.name for c in other_charts(run, shown)]
    # in table order; the axes, the fixed charts' figures and a null figure are left out
    assert names == ["rewardComponentMean", "zeroVarianceFraction", "loss", "evalSeconds"]
    labelled = other_charts(run, shown)[0].panels[0].lines
    assert [(line.label, line.xs) for line in labelled] == [
        ("accuracy", (1, 2)),
        ("length", (1, 2)),
    ]
    assert other_charts(run, shown)[-1].panels[0].lines[0].xs == (0, 2)  # from the evaluations


def test_a_row_the_records_gain_gets_a_panel(tmp_path: Path) -> None:
    without = build(read_records(write_records(tmp_path / "a", [step(1), step(2)])))
    assert 'id="ratioMax"' not in without
    run = read_records(
        write_records(tmp_path / "b", [step(1, ratioMax=1.2), step(2, ratioMax=1.3)])
    )
    page = build(run)
    figure = section_of(page, "ratioMax")
    assert "Largest importance ratio of an included token." in figure
    assert len(pngs(figure)) == 1


def test_a_new_metrics_table_row_shows_up_without_a_change_to_the_report(tmp_path: Path) -> None:
    row = Metric("draft_acceptance", "gauge", "Share of draft tokens the verifier kept.", "rollout")
    steps = [step(1, draftAcceptance=0.5), step(2, draftAcceptance=0.7)]
    run = read_records(write_records(tmp_path, steps))
    assert 'id="draftAcceptance"' not in build(run)  # not a row: not a figure of the trainer
    page = build(run, table=(*METRICS, row))
    assert "Share of draft tokens the verifier kept." in section_of(page, "draftAcceptance")


def test_no_evaluation_is_a_note_instead_of_a_chart(tmp_path: Path) -> None:
    page = build(read_records(write_records(tmp_path, [step(1), step(2)])))
    held_out = section_of(page, "eval")
    assert "Not drawn: the records hold no evaluation" in held_out
    assert "<img" not in held_out
    for name in (n for n in FIXED if n != "eval"):
        assert len(pngs(section_of(page, name))) == 1, name
    # the token chart is drawn from the steps alone
    assert "evalReasoningTokens" in section_of(page, "tokens")


def test_the_page_is_self_contained_and_escaped(tmp_path: Path) -> None:
    run = read_records(write_records(tmp_path, [step(1), step(2)], [evaluation(0)], job="<b>x"))
    page = build(run)
    assert "<b>x" not in page and "&lt;b&gt;x" in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing fetched from elsewhere
    images = pngs(page)
    assert len(images) == len(FIXED) + 4
    for png in images:
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 200


def test_records_without_a_header_still_give_a_report(tmp_path: Path) -> None:
    path = tmp_path / RECORDS_FILE
    path.write_text(record_line("step", step(1)) + "\n")
    page = build(read_records(path))
    assert "no run header" in page


# --------------------------------------------------------------------------- the command
def agpo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agpo_cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "no-such-run"


def _no_records(tmp_path: Path) -> Path:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    return tmp_path / "run"


def _empty(tmp_path: Path) -> Path:
    (tmp_path / RECORDS_FILE).write_text("")
    return tmp_path


def _bad_line(tmp_path: Path) -> Path:
    good = record_line("step", step(1))
    (tmp_path / RECORDS_FILE).write_text(f"{good}\n{{not json\n{good}\n")
    return tmp_path / RECORDS_FILE


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_missing, "does not exist"),
        (_no_records, "holds no records.jsonl"),
        (_empty, "has no step or eval record"),
        (_bad_line, "line 2 is not JSON"),
    ],
    ids=["missing-dir", "no-records", "empty-file", "bad-line"],
)
def test_a_user_mistake_is_one_line_and_a_failure(tmp_path: Path, make: Any, says: str) -> None:
    out = agpo("report", str(make(tmp_path)))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("agpo report: error: ") and says in lines[0], lines[0]
    assert out.stdout == ""
    assert not list(tmp_path.rglob("report.html"))


def test_report_prints_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_records(tmp_path / "run" / "checkpoints", [step(1), step(2)], [evaluation(0)])
    assert main(["report", str(tmp_path / "run")]) == 0
    written = tmp_path / "run" / "checkpoints" / "report.html"  # next to the records
    assert capsys.readouterr().out == f"{written}\n"
    assert len(pngs(written.read_text())) == len(FIXED) + 4
    other = tmp_path / "elsewhere.html"
    assert main(["report", str(written.with_name(RECORDS_FILE)), "--output", str(other)]) == 0
    assert capsys.readouterr().out == f"{other}\n" and other.is_file()


# --------------------------------------------------------------------------- the end of agpo run
def fake_launcher(
    monkeypatch: pytest.MonkeyPatch, code: int, records: bool, seen: list[Path | None]
) -> None:
    """`agpo run` with a run_local that writes what a finished run leaves (or not)."""

    from agpo_trainer.launcher import run_workdir  # the real default, before the module is faked

    def run_local(job: Any, *, workdir: Path | None, source: Path, **_: Any) -> int:
        seen.append(workdir)
        where = run_workdir(job, source, workdir)
        (where / "logs").mkdir(parents=True)  # as the launcher makes it, records or not
        if records:
            write_records(where / "checkpoints", [step(1), step(2)])
        return code

    module = types.ModuleType("agpo_trainer.launcher")
    module.run_local = run_local  # type: ignore[attr-defined]
    module.run_workdir = run_workdir  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agpo_trainer.launcher", module)


TINY = next(p for p in SAMPLES if p.name == "tiny-cpu.yaml")


def test_a_finished_run_ends_with_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Path | None] = []
    fake_launcher(monkeypatch, 0, records=True, seen=seen)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(TINY)]) == 0
    assert seen == [None]
    report = tmp_path / "runs" / "tiny-cpu" / "checkpoints" / "report.html"
    assert report.is_file()
    assert capsys.readouterr().err.splitlines()[-1] == f"  report: {report}"


def test_a_report_failure_after_a_run_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_launcher(monkeypatch, 0, records=False, seen=[])
    assert main(["run", str(TINY), "--workdir", str(tmp_path / "w")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("agpo run: warning: no report ("), err
    assert "holds no records.jsonl" in err[0]


def test_a_failed_run_gets_no_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_launcher(monkeypatch, 1, records=True, seen=[])
    assert main(["run", str(TINY), "--workdir", str(tmp_path / "w")]) == 1
    assert "report" not in capsys.readouterr().err
    assert not (tmp_path / "w" / "checkpoints" / "report.html").exists()


# --------------------------------------------------------------------------- a real run
def test_a_real_runs_report_has_every_chart(tmp_path: Path) -> None:
    path = tmp_path / RECORDS_FILE
    shutil.copy(REAL_RECORDS, path)
    page = report_for(path).read_text()
    assert "Not drawn" not in page
    for name in FIXED:
        assert len(pngs(section_of(page, name))) == 1, name
    assert "20 (steps 1-20 of 20)" in page and "2 (steps 0-20)" in page
    assert "agpo run report: tiny-cpu" in page


@pytest.mark.slow
def test_a_real_runs_report_renders_in_a_browser(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: the report is not rendered in a browser")
    shutil.copy(REAL_RECORDS, tmp_path / RECORDS_FILE)
    report = report_for(tmp_path)
    shot = tmp_path / "shot.png"
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1200,3000", report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), out.stderr
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200  # the charts' lines, bars and antialiased text
    assert (pixels.min(axis=-1) < 0.5).mean() > 0.01  # dark ink, not a white page
