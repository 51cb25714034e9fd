"""The records file's one reader (agpo_api.records): what a restarted run's file means, and one
clear line for a file that is missing, empty or not the trainer's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agpo_api.records import (
    RECORDS_FILE,
    RecordsError,
    find_records,
    flat_params,
    read_records,
    record_line,
)


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def step(n: int, reward: float) -> str:
    return record_line("step", {"step": n, "rewardMean": reward, "prompts": [n]})


def test_a_resumed_run_keeps_the_last_record_of_each_step(tmp_path: Path) -> None:
    path = write(
        tmp_path / RECORDS_FILE,
        record_line("run", {"job": "a", "spec": {}, "versions": {}}),
        step(1, 0.1), step(2, 0.2), step(3, 0.3),
        record_line("run", {"job": "a", "spec": {"x": 1}, "versions": {}}),  # the restart
        step(3, 0.35), step(4, 0.4),
        record_line("eval", {"step": 4, "evalAccuracy": 0.5}),
    )  # fmt: skip
    records = read_records(path)
    assert [(s["step"], s["rewardMean"]) for s in records.steps] == [
        (1, 0.1), (2, 0.2), (3, 0.35), (4, 0.4)
    ]  # fmt: skip
    assert records.run is not None and records.run["spec"] == {"x": 1}  # the latest header
    assert records.evals == [{"kind": "eval", "step": 4, "evalAccuracy": 0.5}]


def test_a_line_cut_by_a_kill_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / RECORDS_FILE
    path.write_text(step(1, 0.1) + "\n" + step(2, 0.2)[:20])
    assert [s["step"] for s in read_records(path).steps] == [1]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "has no step or eval record"),
        (record_line("run", {"job": "a"}) + "\n", "has no step or eval record"),
        ('{"step": 1\n' + step(2, 0.2) + "\n", "line 1 is not JSON"),
        ('{"a": 1}\n', "line 1 has no kind"),
        ("[1, 2]\n", "line 1 has no kind"),
        (record_line("step", {"step": "1"}) + "\n", "line 1: a step record without an integer"),
    ],
    ids=["empty", "header-only", "bad-json", "no-kind", "not-an-object", "step-not-int"],
)
def test_an_unreadable_file_is_one_clear_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / RECORDS_FILE
    path.write_text(content)
    with pytest.raises(RecordsError) as err:
        read_records(path)
    assert expected in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_find_records_takes_a_workdir_a_checkpoint_dir_or_the_file(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    path = write(tmp_path / "checkpoints" / RECORDS_FILE, step(1, 0.1))
    assert find_records(tmp_path) == path
    assert find_records(tmp_path / "checkpoints") == path
    assert find_records(path) == path
    with pytest.raises(RecordsError, match="does not exist"):
        find_records(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordsError, match=r"holds no records\.jsonl"):
        find_records(tmp_path / "empty")


def test_flat_params_name_every_leaf() -> None:
    spec = {"model": {"name": "m", "dtype": "float32"}, "rewards": [{"key": "a"}], "empty": {}}
    assert flat_params(spec) == {
        "model.name": "m", "model.dtype": "float32",
        "rewards": json.dumps([{"key": "a"}]), "empty": "{}",
    }  # fmt: skip
