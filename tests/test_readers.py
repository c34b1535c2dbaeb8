"""Parquet files, saved Hugging Face datasets and folders are read like JSONL, with row-level lineage."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.curation.steps import read_sources
from pipeline.recipe import DataRecipe, SourceSpec

ALPACA = {"instruction": "Summarise", "input": "A terminal map renderer.", "output": "map renderer"}
CHATML = {"messages": [{"role": "user", "content": "Which package has ls?"}, {"role": "assistant", "content": "coreutils"}]}


def _read(path) -> tuple[list, list]:
    result = read_sources(DataRecipe(sources=[SourceSpec(path=str(path))]))
    return result.records, result.quarantined


def test_parquet_rows_of_mixed_shapes_are_read_and_a_bad_row_is_quarantined(tmp_path):
    path = tmp_path / "mixed.parquet"
    rows = [ALPACA, CHATML, {"instruction": "Summarise", "input": "x", "output": ""}]
    columns = {key: [row.get(key) for row in rows] for key in ("instruction", "input", "output", "messages")}
    pq.write_table(pa.Table.from_pydict(columns), path)  # the union of both shapes' columns, nulls elsewhere
    records, quarantined = _read(path)
    assert [(r["origin"]["format"], r["origin"]["line"]) for r in records] == [("alpaca", 1), ("chatml", 2)]
    assert [(q["file"], q["line"], q["reason"]) for q in quarantined] == [("mixed.parquet", 3, "empty_assistant")]


def test_a_saved_dataset_dict_is_read_split_by_split(tmp_path):
    path = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([ALPACA]),
                          "extra": datasets.Dataset.from_list([ALPACA | {"output": "other"}])}).save_to_disk(str(path))
    records, quarantined = _read(path)
    assert not quarantined
    assert [r["origin"]["file"] for r in records] == ["saved/extra", "saved/train"]
    assert [r["messages"][-1]["content"] for r in records] == ["other", "map renderer"]


def test_a_folder_is_read_file_by_file_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.jsonl").write_text(json.dumps(CHATML) + "\n")
    pq.write_table(pa.Table.from_pylist([ALPACA]), tmp_path / "b" / "c.parquet")
    (tmp_path / "notes.txt").write_text("not data")
    records, _ = _read(tmp_path)
    assert [r["origin"]["file"] for r in records] == [f"{tmp_path.name}/a.jsonl", f"{tmp_path.name}/b/c.parquet"]


def test_files_of_one_name_in_different_folders_keep_separate_books(tmp_path):
    from assets.sources import _by_file
    from pipeline.recipe import SourceSpec

    for folder, lines in (("x", [json.dumps(CHATML), "{broken"]), ("y", [json.dumps(CHATML), json.dumps(ALPACA)])):
        (tmp_path / "many" / folder).mkdir(parents=True)
        (tmp_path / "many" / folder / "data.jsonl").write_text("\n".join(lines) + "\n")
        (tmp_path / folder / "train.jsonl").parent.mkdir(exist_ok=True)
        (tmp_path / folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    folder_books = _by_file(read_sources(DataRecipe(sources=[SourceSpec(path=str(tmp_path / "many"))])))
    assert folder_books == [{"file": "many/x/data.jsonl", "lines": 2, "quarantined": 1, "share": 0.5},
                            {"file": "many/y/data.jsonl", "lines": 2, "quarantined": 0, "share": 0.0}]
    two_sources = [SourceSpec(path=str(tmp_path / "x" / "train.jsonl")), SourceSpec(path=str(tmp_path / "y" / "train.jsonl"))]
    books = _by_file(read_sources(DataRecipe(sources=two_sources)))
    assert [(b["file"], b["lines"], b["quarantined"]) for b in books] == [
        (str(tmp_path / "x" / "train.jsonl"), 2, 1), (str(tmp_path / "y" / "train.jsonl"), 2, 0)]
