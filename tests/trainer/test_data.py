"""Datasets: builtin tasks, files, bad rows, and the seeded, resumable prompt order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agpo_api.models import DatasetSpec
from agpo_trainer.data import (
    DataError,
    PromptSampler,
    check_prompts_fit,
    load_examples,
)
from agpo_trainer.tasks.arithmetic import arithmetic_rows


def spec(**source: object) -> DatasetSpec:
    return DatasetSpec.model_validate({"source": source, "promptTemplate": "{prompt}="})


@pytest.mark.parametrize("operands", [2, 3, 5])
def test_arithmetic_rows_have_single_digit_answers_that_are_right(operands: int) -> None:
    rows = arithmetic_rows(300, seed=1, operands=operands)
    assert len(rows) == 300
    for row in rows:
        assert row["prompt"].count("+") + row["prompt"].count("-") == operands - 1
        assert eval(row["prompt"]) == int(row["answer"])
        assert 0 <= int(row["answer"]) <= 9


def test_arithmetic_rows_are_seeded() -> None:
    assert arithmetic_rows(50, seed=3) == arithmetic_rows(50, seed=3)
    assert arithmetic_rows(50, seed=3) != arithmetic_rows(50, seed=4)


def test_builtin_source_applies_the_template() -> None:
    examples = load_examples(spec(builtin={"size": 5, "seed": 0}))
    assert len(examples) == 5
    assert all(e.prompt.endswith("=") for e in examples)
    assert [e.index for e in examples] == list(range(5))


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_file(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "1+1", "answer": 2}, {"prompt": "2+2", "answer": "4"}]
    )
    examples = load_examples(spec(file={"path": str(path)}))
    assert [(e.prompt, e.answer) for e in examples] == [("1+1=", "2"), ("2+2=", "4")]


def test_relative_path_is_resolved_against_the_job_file_directory(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": "1+1", "answer": 2}])
    assert len(load_examples(spec(file={"path": "d.jsonl"}), base_dir=tmp_path)) == 1


def test_parquet_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"question": ["3-1", "4+4"], "answer": ["2", "8"]}), path)
    ds = DatasetSpec.model_validate(
        {"source": {"file": {"path": str(path), "format": "parquet"}}, "promptField": "question"}
    )
    assert [e.answer for e in load_examples(ds)] == ["2", "8"]


def test_bad_row_is_fatal_by_default_and_named(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "1+1", "answer": 2}, {"prompt": "2+2"}, {"prompt": "  ", "answer": 1}],
    )
    with pytest.raises(DataError) as info:
        load_examples(spec(file={"path": str(path)}))
    message = str(info.value)
    assert "row 2 has no field 'answer'" in message and "badRows: skip" in message
    assert "\n" not in message


def test_bad_rows_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "1+1", "answer": 2}, {"prompt": "2+2"}, {"prompt": "  ", "answer": 1}],
    )
    ds = DatasetSpec.model_validate({"source": {"file": {"path": str(path)}}, "badRows": "skip"})
    examples = load_examples(ds)
    assert [e.prompt for e in examples] == ["1+1"]
    assert "row 2 has no field 'answer'" in caplog.text
    assert "row 3 has an empty 'prompt'" in caplog.text


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset file .*nope.jsonl does not exist"):
        load_examples(spec(file={"path": str(tmp_path / "nope.jsonl")}))


def test_unreadable_file_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(DataError, match="cannot read"):
        load_examples(spec(file={"path": str(path)}))


def test_sampler_order_is_seeded_and_resumable() -> None:
    examples = load_examples(spec(builtin={"size": 7}))
    a = PromptSampler(examples, seed=5)
    first = [e.index for e in a.take(10)]  # wraps into a second epoch
    assert sorted(first[:7]) == list(range(7))
    state = a.state_dict()
    rest = [e.index for e in a.take(9)]

    b = PromptSampler(examples, seed=5)
    assert [e.index for e in b.take(10)] == first
    c = PromptSampler(examples, seed=5)
    c.load_state_dict(state)
    assert [e.index for e in c.take(9)] == rest
    assert [e.index for e in PromptSampler(examples, seed=6).take(10)] != first


def test_hf_source_loads_a_local_dataset_directory(tmp_path: Path) -> None:
    """`source.hf.name` may be a local directory (no hub needed): datasets finds the files."""
    (tmp_path / "ds").mkdir()
    write_jsonl(tmp_path / "ds" / "train.jsonl", [{"q": "5-3", "a": "2"}, {"q": "1+2", "a": "3"}])
    ds = DatasetSpec.model_validate(
        {
            "source": {"hf": {"name": str(tmp_path / "ds"), "split": "train"}},
            "promptField": "q",
            "answerField": "a",
        }
    )
    assert [(e.prompt, e.answer) for e in load_examples(ds)] == [("5-3", "2"), ("1+2", "3")]


def test_hf_source_that_cannot_load_is_a_data_error(tmp_path: Path) -> None:
    ds = DatasetSpec.model_validate({"source": {"hf": {"name": str(tmp_path / "missing")}}})
    with pytest.raises(DataError, match="cannot load dataset"):
        load_examples(ds)


def test_model_location_follows_the_spec(tmp_path: Path) -> None:
    from agpo_api.models import ModelSpec
    from agpo_trainer.models import model_location

    pvc = ModelSpec.model_validate(
        {"name": "Qwen/Qwen2.5-Math-1.5B", "source": {"pvc": "models", "subPath": "q"}}
    )
    assert model_location(pvc, tmp_path) == "/models/q"
    local = ModelSpec.model_validate({"name": "x", "source": {"path": "/data/m"}})
    assert model_location(local, tmp_path) == "/data/m"
    assert model_location(ModelSpec.model_validate({"name": "org/model"}), tmp_path) == "org/model"
    built = model_location(ModelSpec.model_validate({"name": "builtin:tiny"}), tmp_path)
    assert (Path(built) / "config.json").is_file()


# --------------------------------------------------------------------------- reliability
def test_empty_jsonl_says_the_file_is_empty(tmp_path: Path) -> None:
    """Before: ``cannot read ... as jsonl: StopIteration``."""
    path = tmp_path / "d.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataError) as info:
        load_examples(spec(file={"path": str(path)}))
    assert "has no rows (it is empty)" in str(info.value) and str(path) in str(info.value)


def test_malformed_line_is_named_by_its_number(tmp_path: Path) -> None:
    """Before: ``Expected object or value at position 27`` without the line."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "1+1", "answer": "2"}\n\n{"prompt": "2+2", "answer": }\n')
    with pytest.raises(DataError) as info:
        load_examples(spec(file={"path": str(path)}))
    message = str(info.value)
    assert "line 3 is not valid JSON" in message and "column 29" in message, message
    assert "badRows: skip" in message and "\n" not in message


def test_malformed_line_is_skipped_with_bad_rows_skip(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "1+1", "answer": "2"}\nnot json\n{"prompt": "3", "answer": "3"}\n')
    ds = DatasetSpec.model_validate({"source": {"file": {"path": str(path)}}, "badRows": "skip"})
    assert [e.prompt for e in load_examples(ds)] == ["1+1", "3"]


def test_a_template_with_another_placeholder_names_the_field() -> None:
    ds = DatasetSpec.model_validate(
        {"source": {"builtin": {"size": 3}}, "promptTemplate": "{prompt} = {answer}"}
    )
    with pytest.raises(DataError, match=r"spec.dataset.promptTemplate .*\{prompt\}"):
        load_examples(ds)


def test_check_prompts_fit_names_the_limit_and_the_shortest_prompt() -> None:
    examples = load_examples(spec(builtin={"size": 20}))
    check_prompts_fit(examples, lambda text: list(text.encode()), 8)  # fits: no error
    with pytest.raises(DataError) as info:
        check_prompts_fit(examples, lambda text: list(text.encode()), 2)
    message = str(info.value)
    assert "spec.training.maxPromptTokens=2" in message and "shortest" in message
