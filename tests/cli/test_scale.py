"""`agpo scale RUN_DIR --rollout-replicas N`: what it asks of a running `agpo run`, and one
clear line for each user mistake. (The running side, a server joining and leaving, is
tests/e2e/test_elastic_pool.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from agpo_cli.main import main
from agpo_trainer.local.servers import read_replicas, replicas_file, servers_file


def test_scale_asks_the_running_run_for_another_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    servers_file(tmp_path).parent.mkdir(parents=True)
    servers_file(tmp_path).write_text("http://127.0.0.1:8001\n")  # what a running run lists
    assert main(["scale", str(tmp_path), "--rollout-replicas", "3"]) == 0
    assert read_replicas(tmp_path) == 3 and replicas_file(tmp_path).read_text() == "3\n"
    assert "asked for 3 rollout server(s)" in capsys.readouterr().out
    assert [p.name for p in servers_file(tmp_path).parent.iterdir() if p.name.startswith(".")] == []


def test_a_directory_without_a_running_run_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scale", str(tmp_path), "--rollout-replicas", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"agpo scale: error: no running `agpo run` in {tmp_path}")
    assert err.count("\n") == 1 and "--workdir" in err
    assert not replicas_file(tmp_path).exists()  # nothing half-created


@pytest.mark.parametrize("count", ["0", "-1", "two", "1.5"])
def test_a_count_that_is_not_a_whole_number_of_at_least_one_is_refused(
    tmp_path: Path, count: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["scale", str(tmp_path), "--rollout-replicas", count])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--rollout-replicas: must be a whole number >= 1" in err


def test_read_replicas_ignores_what_is_not_a_count(tmp_path: Path) -> None:
    assert read_replicas(tmp_path) is None
    replicas_file(tmp_path).parent.mkdir(parents=True)
    for text, expected in (("2\n", 2), ("0\n", None), ("x\n", None), ("", None)):
        replicas_file(tmp_path).write_text(text)
        assert read_replicas(tmp_path) == expected, text
