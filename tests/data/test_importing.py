"""The one writer of input folders every importer (and the synthetic generator) uses."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys.data.importing import OutputExistsError, write_input_folder


def _tables(n: int = 2) -> dict[str, pd.DataFrame]:
    return {
        "interactions": pd.DataFrame({"user_id": range(n), "item_id": range(n),
                                      "timestamp": pd.to_datetime(["2024-01-01"] * n),
                                      "event_type": pd.Categorical(["view"] * n)}),
        "users": pd.DataFrame({"user_id": range(n)}),
        "items": pd.DataFrame({"item_id": range(n)}),
    }


def test_writes_three_tables_and_metadata_with_text_as_plain_strings(tmp_path):
    out = tmp_path / "out"
    rows = write_input_folder(out, _tables(), metadata={"importer": "test"})
    assert rows == {"interactions": 2, "users": 2, "items": 2}
    assert json.loads((out / "import.json").read_text()) == {"importer": "test"}
    schema = pq.read_schema(out / "interactions.parquet")
    assert str(schema.field("event_type").type) == "string"  # a pandas categorical, stored as plain text


def test_replacing_needs_force_and_a_failed_write_keeps_the_old_folder(tmp_path):
    out = tmp_path / "out"
    write_input_folder(out, _tables(2))
    with pytest.raises(OutputExistsError, match=r"already exists and is not empty \(use --force"):
        write_input_folder(out, _tables(3))
    broken = _tables(3)
    broken["items"]["mixed"] = [1, "two", 3.0]  # pyarrow cannot store this column: the write fails midway
    with pytest.raises(Exception):
        write_input_folder(out, broken, force=True)
    assert pq.read_table(out / "users.parquet").num_rows == 2  # the old folder, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
    write_input_folder(out, _tables(3), force=True)
    assert pq.read_table(out / "users.parquet").num_rows == 3


def test_an_empty_existing_folder_is_used(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_input_folder(out, _tables())
    assert (out / "interactions.parquet").is_file()
