import json

import datasets
import pytest

from litsft.data.sources import load_rows
from litsft.errors import LitSFTError
from tests.helpers import write_rows

COLS = {"instruction": "instruction", "input": "input", "output": "output"}


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "csv", "folder"])
def test_every_local_format_gives_the_same_rows(tmp_path, rows, fmt):
    ds = datasets.Dataset.from_list(rows)
    if fmt == "json":
        path = write_rows(tmp_path / "d.json", rows)
    elif fmt == "jsonl":
        path = write_rows(tmp_path / "d.jsonl", rows, jsonl=True)
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        ds.to_parquet(str(path))
    elif fmt == "csv":
        path = tmp_path / "d.csv"
        ds.to_csv(str(path), index=False)
    else:
        path = tmp_path / "folder"
        ds.save_to_disk(str(path))
    loaded, fingerprint = load_rows(str(path), COLS)
    assert loaded.column_names == ["instruction", "input", "output"]
    assert loaded.to_list() == [{k: r[k] for k in ("instruction", "input", "output")} for r in rows]
    assert isinstance(fingerprint, str) and fingerprint


def test_column_mapping_and_absent_input_column(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"prompt": "Say hi", "answer": "hi"}], jsonl=True)
    # The default input column may be absent (issue 4: a column the user names must exist, see test_bad_input.py).
    loaded, _ = load_rows(str(path), {"instruction": "prompt", "input": "input", "output": "answer"})
    assert loaded.to_list() == [{"instruction": "Say hi", "input": "", "output": "hi"}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ('[{"instruction": "a", "output": "b"},\n{"instruction": ]', "line 2"),
        ('{"instruction": "a", "output": "b"}\n{bad json}\n', "line 2 is not valid JSON"),
        (json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]), "row 1 has no field 'output'"),
        (json.dumps([{"instruction": "a", "output": None}]), "row 0, field 'output' is NoneType"),
        (json.dumps([{"instruction": 3, "output": "x"}]), "row 0, field 'instruction' is int"),
        (json.dumps([{"instruction": "   ", "output": "x"}]), "row 0, field 'instruction' is empty"),
        (json.dumps([{"instruction": "a", "input": ["x"], "output": "x"}]), "row 0, field 'input' is list"),
        (json.dumps([{"question": "a", "output": "x"}]), "no column 'instruction'.*--data.instruction_column"),
    ],
)
def test_bad_rows_name_the_file_row_and_field(tmp_path, content, message):
    path = tmp_path / ("d.jsonl" if "bad json" in content else "d.json")
    path.write_text(content)
    with pytest.raises(LitSFTError, match=message) as err:
        load_rows(str(path), COLS)
    assert str(path) in str(err.value)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(LitSFTError, match="does not exist"):
        load_rows(str(tmp_path / "nope.json"), COLS)
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(LitSFTError, match="use .json, .jsonl, .parquet or .csv"):
        load_rows(str(tmp_path / "d.txt"), COLS)


def test_not_utf8(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"instruction": "caf\xe9", "output": "x"}]')
    with pytest.raises(LitSFTError, match="not UTF-8"):
        load_rows(str(path), COLS)


def test_unreachable_hub_id_says_offline_and_how_to_pass_a_file():
    with pytest.raises(LitSFTError, match="offline.*--data.dataset path/to/alpaca_data.json"):
        load_rows("tatsu-lab/alpaca", COLS)
