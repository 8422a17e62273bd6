"""`recsys data import`: a user's own event log with their own column names.

Integer-id imports are run through ``validate_input`` as well. String ids (SKUs, UUIDs) are what this
importer keeps exactly, but validation refuses them until the branch teaching it string ids is merged,
so those tests check the written parquet tables themselves (types, columns, values).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys.cli import main
from recsys.data.generic import ImportSpec, import_tables, read_tables
from recsys.data.importing import InputFormatError, OutputExistsError
from recsys.data.validation import validate_input


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def _read(folder: Path, name: str) -> pd.DataFrame:
    return pq.read_table(folder / f"{name}.parquet").to_pandas()


def _spec(events: Path, **kwargs) -> ImportSpec:
    return ImportSpec(events, kwargs.pop("user_col", "customer"), kwargs.pop("item_col", "sku"),
                      kwargs.pop("time_col", "ts"), **kwargs)


# ---------------------------------------------------------------------------------------------
# Integer ids: through validation


def test_integer_ids_and_millisecond_timestamps_pass_validation(tmp_path, caplog):
    events = _write(tmp_path / "events.csv", """
customer,sku,ts,session
10,7,1704103200000,a
11,7,1704106800500,b
10,8,1704189600000,a
12,9,1704276000000,c
""")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        result = import_tables(_spec(events), out)
    assert "holds unix timestamps in milliseconds (median 1.7e+12); pass --time-unit" in caplog.text
    assert "columns session are not part of the interactions contract" in caplog.text
    assert result.rows == {"interactions": 4, "users": 3, "items": 3}
    assert result.metadata["detected"]["time_unit"] == "ms"

    tables = validate_input(out)  # the written folder is a valid input folder
    inter = tables.interactions
    assert list(inter.columns) == ["user_id", "item_id", "timestamp"]
    assert inter["user_id"].tolist() == [10, 11, 10, 12] and inter["item_id"].tolist() == [7, 7, 8, 9]
    assert inter["timestamp"].tolist()[:2] == [pd.Timestamp("2024-01-01 10:00:00"), pd.Timestamp("2024-01-01 11:00:00.500")]
    # no users/items tables given: the ids seen in the interactions, sorted
    assert tables.users["user_id"].tolist() == [10, 11, 12] and list(tables.users.columns) == ["user_id"]
    assert tables.items["item_id"].tolist() == [7, 8, 9]
    assert _read(out, "interactions")["user_id"].dtype == np.int64


def test_seconds_iso_text_and_an_explicit_unit(tmp_path):
    seconds = _write(tmp_path / "s.csv", "customer,sku,ts\n1,2,1704103200\n1,3,1704106800\n")
    tables, meta = read_tables(_spec(seconds))
    assert tables["interactions"]["timestamp"].iloc[0] == pd.Timestamp("2024-01-01 10:00:00")
    assert meta["detected"]["time_unit"] == "s"
    # the same numbers said to be milliseconds are in 1970: refused, with the row
    with pytest.raises(InputFormatError, match=r"s\.csv: 2 rows with a 'ts' before 1990-01-01 .*e\.g\. line 2: customer='1', sku='2', ts=1704103200"):
        read_tables(_spec(seconds, time_unit="ms"))
    iso = _write(tmp_path / "iso.csv", """
customer,sku,ts
1,2,2024-01-01T10:00:00Z
1,3,2024-01-01T12:00:00+02:00
2,3,2024-01-02 09:30:00
2,4,2024-01-03
""")
    stamps = read_tables(_spec(iso))[0]["interactions"]["timestamp"].tolist()
    # an offset is converted to UTC; no offset is taken as UTC (also when mixed with offsets)
    assert stamps == [pd.Timestamp("2024-01-01 10:00"), pd.Timestamp("2024-01-01 10:00"),
                      pd.Timestamp("2024-01-02 09:30"), pd.Timestamp("2024-01-03")]


def test_event_and_label_columns(tmp_path):
    events = _write(tmp_path / "events.csv", """
customer,sku,ts,type,clicked
1,2,2024-01-01T10:00:00,view,0
1,3,2024-01-01T10:01:00,click,1
2,3,2024-01-01T10:02:00,view,False
2,4,2024-01-01T10:03:00,purchase,TRUE
""")
    out = tmp_path / "out"
    import_tables(_spec(events, event_col="type", label_col="clicked"), out)
    tables = validate_input(out)
    assert tables.has_labels
    assert tables.interactions["event_type"].tolist() == ["view", "click", "view", "purchase"]
    assert tables.interactions["label"].tolist() == [0, 1, 0, 1]
    bad = _write(tmp_path / "bad.csv", "customer,sku,ts,clicked\n1,2,2024-01-01,yes\n1,3,2024-01-01,1\n")
    with pytest.raises(InputFormatError, match=r"bad\.csv: 1 row with a 'clicked' other than 0/1/true/false, e\.g\. line 2: .*clicked='yes'"):
        read_tables(_spec(bad, label_col="clicked"))


def test_users_and_items_tables_carry_their_features(tmp_path):
    events = _write(tmp_path / "events.csv", "cust,sku,ts\n1,7,2024-01-01\n2,8,2024-01-02\n")
    users = _write(tmp_path / "users.csv", "customer,country,age\n1,UK,34\n2,FR,\n3,DE,51\n")
    items = tmp_path / "items.parquet"
    pd.DataFrame({"sku": [7, 8], "category": ["a", "b"], "price": [1.5, 2.0], "label": ["promo", None]}).to_parquet(items)
    out = tmp_path / "out"
    result = import_tables(
        _spec(events, user_col="cust", users=users, users_id_col="customer", items=items), out
    )
    tables = validate_input(out)
    assert list(tables.users.columns) == ["user_id", "country", "age"]
    assert tables.users["user_id"].tolist() == [1, 2, 3]  # users without events stay
    assert tables.users["age"].dtype == np.float64  # continuous
    # 'label' is a contract column's name: prefixed (with a warning), not refused
    assert list(tables.items.columns) == ["item_id", "category", "price", "item_label"]
    assert any("imported as 'item_label'" in w for w in result.metadata["warnings"])


def test_duplicate_events_are_refused_or_dropped_and_counted(tmp_path):
    events = _write(tmp_path / "events.csv", """
customer,sku,ts,note
1,2,2024-01-01T10:00:00,x
1,3,2024-01-01T10:00:00,x
1,2,2024-01-01T10:00:00,y
1,2,2024-01-01T10:00:00,x
""")
    # duplicates are judged on the imported columns: line 4 differs only in a dropped column
    with pytest.raises(InputFormatError, match=(r"events\.csv: 2 duplicate events \(same customer, sku, ts\), "
                                                r"e\.g\. line 4: customer='1', sku='2', ts='2024-01-01T10:00:00' repeats line 2; "
                                                r"--drop-duplicates keeps")):
        read_tables(_spec(events))
    out = tmp_path / "out"
    result = import_tables(_spec(events, drop_duplicates=True), out)
    assert result.metadata["dropped"] == {"duplicate events": 2}
    assert validate_input(out).interactions["item_id"].tolist() == [2, 3]


def test_null_ids_are_refused_with_the_row_or_dropped(tmp_path):
    events = _write(tmp_path / "events.csv", """
customer,sku,ts
1,2,2024-01-01
,3,2024-01-02
null,3,2024-01-03
2, ,2024-01-04
3,4,not a date
4,5,2024-01-05
""")
    with pytest.raises(InputFormatError) as caught:
        read_tables(_spec(events))
    message = str(caught.value)
    assert "3 problems" in message
    assert "events.csv: 2 rows with a null or blank 'customer', e.g. line 3: customer=null, sku='3', ts='2024-01-02'" in message
    assert "events.csv: 1 row with a null or blank 'sku', e.g. line 5: customer='2', sku=' '" in message  # blank: shown as it is
    assert "1 row with a 'ts' that is not a timestamp (ISO-8601 text or a unix epoch), e.g. line 6" in message
    assert "--drop-invalid drops such rows" in message
    out = tmp_path / "out"
    result = import_tables(_spec(events, drop_invalid=True), out)
    assert sum(result.metadata["dropped"].values()) == 4
    assert result.metadata["dropped"]["rows with a null or blank 'customer'"] == 2
    assert validate_input(out).interactions["user_id"].tolist() == [1, 4]


def test_events_of_unknown_users_are_refused_or_dropped(tmp_path):
    events = _write(tmp_path / "events.csv", "customer,sku,ts\n1,2,2024-01-01\n9,2,2024-01-02\n")
    users = _write(tmp_path / "users.csv", "customer,segment\n1,a\n2,b\n")
    with pytest.raises(InputFormatError, match=r"events\.csv: 1 row with a 'customer' missing from users\.csv, e\.g\. line 3: customer='9'"):
        read_tables(_spec(events, users=users))
    tables, meta = read_tables(_spec(events, users=users, drop_invalid=True))
    assert tables["interactions"]["user_id"].tolist() == [1]
    assert meta["dropped"] == {"rows with a 'customer' missing from users.csv": 1}


def test_users_table_with_conflicting_or_repeated_rows(tmp_path):
    events = _write(tmp_path / "events.csv", "customer,sku,ts\n1,2,2024-01-01\n")
    conflict = _write(tmp_path / "users.csv", "customer,segment\n1,a\n2,b\n1,c\n")
    with pytest.raises(InputFormatError, match=r"users\.csv: 1 rows repeat an 'customer' with different values, e\.g\. line 4: customer='1', segment='c' \(first at line 2\)"):
        read_tables(_spec(events, users=conflict))
    repeated = _write(tmp_path / "users2.csv", "customer,segment\n1,a\n2,b\n1,a\n")
    with pytest.raises(InputFormatError, match=r"users2\.csv: 1 row repeating an earlier row exactly"):
        read_tables(_spec(events, users=repeated))
    tables, meta = read_tables(_spec(events, users=repeated, drop_duplicates=True))
    assert tables["users"]["user_id"].tolist() == [1, 2] and meta["dropped"] == {"duplicate rows in users2.csv": 1}


def test_missing_columns_name_the_flag_and_the_columns_found(tmp_path):
    events = _write(tmp_path / "events.csv", "customer,sku,when\n1,2,2024-01-01\n")
    with pytest.raises(InputFormatError, match=r"events\.csv: no column 'ts' \(--time-col\); columns found: customer, sku, when"):
        read_tables(_spec(events))
    users = _write(tmp_path / "users.csv", "id,segment\n1,a\n")
    with pytest.raises(InputFormatError, match=r"users\.csv: no column 'customer' \(--users-id-col\)"):
        read_tables(_spec(events, time_col="when", users=users))


# ---------------------------------------------------------------------------------------------
# String ids: kept exactly (checked on the written tables; validation refuses strings for now)


def test_string_ids_are_kept_exactly(tmp_path):
    events = _write(tmp_path / "events.csv", """
customer,sku,ts
001,85123A,2024-01-01T10:00:00
002,NA,2024-01-01T11:00:00
17,22423,2024-01-02T09:00:00
001,9f1c2b7e-3a4d-4e5f-8a9b-0c1d2e3f4a5b,2024-01-03T09:00:00
""")
    items = _write(tmp_path / "items.csv", """
sku,description,price
85123A,"WHITE HANGING HEART T-LIGHT HOLDER, large",2.55
NA,Namibia flag,1.0
22423,REGENCY CAKESTAND 3 TIER,12.75
9f1c2b7e-3a4d-4e5f-8a9b-0c1d2e3f4a5b,Ünïcödé mug,
""")
    out = tmp_path / "out"
    result = import_tables(_spec(events, items=items), out)
    assert result.metadata["detected"]["user_id_type"] == "string"  # '001' is not a canonical integer
    assert result.metadata["detected"]["item_id_type"] == "string"
    inter, users, itemtab = _read(out, "interactions"), _read(out, "users"), _read(out, "items")
    assert inter.dtypes.astype(str).to_dict() == {"user_id": "object", "item_id": "object", "timestamp": "datetime64[ns]"}
    assert inter["user_id"].tolist() == ["001", "002", "17", "001"]  # leading zeros kept
    assert inter["item_id"].tolist() == ["85123A", "NA", "22423", "9f1c2b7e-3a4d-4e5f-8a9b-0c1d2e3f4a5b"]  # 'NA' is an id
    assert all(isinstance(v, str) for v in inter["item_id"])
    assert users["user_id"].tolist() == ["001", "002", "17"]
    assert list(itemtab.columns) == ["item_id", "description", "price"]
    assert itemtab.set_index("item_id").loc["85123A", "description"] == "WHITE HANGING HEART T-LIGHT HOLDER, large"
    assert itemtab.set_index("item_id").loc["9f1c2b7e-3a4d-4e5f-8a9b-0c1d2e3f4a5b", "description"] == "Ünïcödé mug"
    assert np.isnan(itemtab.set_index("item_id").loc["9f1c2b7e-3a4d-4e5f-8a9b-0c1d2e3f4a5b", "price"])
    assert json.loads((out / "import.json").read_text())["columns"]["user_id"] == "customer"


def test_one_text_id_makes_the_whole_entity_text(tmp_path):
    events = _write(tmp_path / "events.csv", "customer,sku,ts\n1,7,2024-01-01\n2,8,2024-01-02\n")
    users = _write(tmp_path / "users.csv", "customer,segment\n1,a\n2,b\n007,c\n")
    tables, meta = read_tables(_spec(events, users=users))
    assert meta["detected"] == {**meta["detected"], "user_id_type": "string", "item_id_type": "int64"}
    assert tables["users"]["user_id"].astype(object).tolist() == ["1", "2", "007"]
    assert tables["interactions"]["user_id"].astype(object).tolist() == ["1", "2"]
    assert tables["interactions"]["item_id"].tolist() == [7, 8]


def test_parquet_input_keeps_its_types(tmp_path):
    events = tmp_path / "events.parquet"
    pd.DataFrame({
        "customer": ["u-1", "u-2", "u-1"],
        "sku": [10, 11, 12],
        "ts": pd.to_datetime(["2024-01-01 12:00", "2024-01-01 13:00", "2024-01-02 12:00"]).tz_localize("Europe/Paris"),
    }).to_parquet(events)
    out = tmp_path / "out"
    result = import_tables(_spec(events), out)
    inter = _read(out, "interactions")
    assert inter["user_id"].tolist() == ["u-1", "u-2", "u-1"] and inter["item_id"].tolist() == [10, 11, 12]
    assert inter["item_id"].dtype == np.int64
    assert inter["timestamp"].iloc[0] == pd.Timestamp("2024-01-01 11:00")  # converted to UTC
    assert result.metadata["detected"]["time_format"] == "datetime"


def test_a_folder_of_parts_names_the_part_in_errors(tmp_path):
    parts = tmp_path / "events"
    _write(parts / "part-0.csv", "customer,sku,ts\n1,2,2024-01-01\n1,3,2024-01-02\n")
    _write(parts / "part-1.csv", "customer,sku,ts\n2,3,2024-01-03\n,4,2024-01-04\n")
    _write(parts / "_SUCCESS", "")
    with pytest.raises(InputFormatError, match=r"events/: 1 row with a null or blank 'customer', e\.g\. part-1\.csv line 3"):
        read_tables(_spec(parts))
    tables, _ = read_tables(_spec(parts, drop_invalid=True))
    assert tables["interactions"]["item_id"].tolist() == [2, 3, 3]


def test_large_files_show_progress_per_chunk(tmp_path, caplog):
    rows = "\n".join(f"{i % 50},{i % 7},{1704103200 + i}" for i in range(2_500))
    events = _write(tmp_path / "events.csv", "customer,sku,ts\n" + rows + "\n")
    with caplog.at_level(logging.INFO, logger="recsys.data.importing"):
        tables, _ = read_tables(_spec(events, chunk_rows=1_000))
    progress = [r.getMessage() for r in caplog.records if "rows read" in r.getMessage()]
    assert [m.split(" rows read")[0] for m in progress] == ["events.csv: 1,000", "events.csv: 2,000", "events.csv: 2,500"]
    assert all("rows/s" in m for m in progress)
    assert len(tables["interactions"]) == 2_500 and len(tables["users"]) == 50


# ---------------------------------------------------------------------------------------------
# Output folder and CLI


def test_output_folder_is_refused_unless_forced_and_never_half_written(tmp_path):
    events = _write(tmp_path / "events.csv", "customer,sku,ts\n1,2,2024-01-01\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="not empty"):
        import_tables(_spec(events), out)
    bad = _write(tmp_path / "bad.csv", "customer,sku,ts\n,2,2024-01-01\n")
    with pytest.raises(InputFormatError):
        import_tables(_spec(bad), out, force=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # a failed import leaves the old folder as it was
    import_tables(_spec(events), out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["import.json", "interactions.parquet", "items.parquet", "users.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left behind


def test_cli_import_then_validate(tmp_path, capsys):
    events = _write(tmp_path / "events.csv", "customer,sku,ts,type\n1,2,1704103200000,view\n1,3,1704106800000,buy\n1,3,1704106800000,buy\n")
    out = tmp_path / "out"
    argv = ["data", "import", "--interactions", str(events), "--user-col", "customer", "--item-col", "sku",
            "--time-col", "ts", "--event-col", "type", "--out", str(out)]
    assert main(argv) == 2
    assert "error: events.csv: 1 duplicate events" in capsys.readouterr().err
    assert not out.exists()
    assert main(argv + ["--drop-duplicates"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: interactions 2 rows, users 1 rows, items 2 rows" in printed
    assert "dropped 1 duplicate events" in printed and "detected time_unit: ms" in printed
    assert main(["data", "validate", str(out)]) == 0


def test_data_help_lists_the_importers(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["data", "--help"])
    assert exited.value.code == 0
    listed = capsys.readouterr().out
    for command in ("generate", "import-movielens", "import", "validate", "ingest"):
        assert command in listed
