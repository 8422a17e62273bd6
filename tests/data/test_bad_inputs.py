"""Bad landing data through `recsys data ingest`, as a user meets it: one line per problem naming the
file, the column and an example value, exit code 2, no traceback, and the data root exactly as it was
(no new data version, the existing one untouched). docs/bad-inputs.md lists these cases."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from data_helpers import valid_tables, write_folder
from recsys.cli import main

VALID_CSV = {name: frame.to_csv(index=False) for name, frame in valid_tables().items()}


def with_line(table: str, number: int, line: str) -> dict[str, str]:
    """The valid CSV of ``table`` with its line ``number`` (1: the header) replaced by ``line``."""
    lines = VALID_CSV[table].splitlines()
    lines[number - 1] = line
    return {f"{table}.csv": "\n".join(lines) + "\n"}


# case id -> (files written over the valid CSV folder: name -> text or bytes (None: removed), fragments of the message)
CASES = {
    "missing_column": (
        {"interactions.csv": valid_tables()["interactions"].drop(columns=["timestamp"]).to_csv(index=False)},
        ["interactions.csv: missing required column 'timestamp'", "columns found: user_id, item_id"],
    ),
    "missing_table": ({"items.csv": None}, ["items: missing table", "items.parquet, items.csv"]),
    "empty_file": ({"users.csv": b""}, ["users.csv: cannot read the file"]),
    "header_only": ({"users.csv": "user_id,age_bucket\n"}, ["users.csv: table is empty (0 rows)"]),
    "duplicate_header": (
        {"items.csv": "item_id,category,category\n0,a,x\n1,b,y\n2,c,z\n"},
        ["items.csv: cannot read the file: line 1: column 'category' appears 2 times in the header (columns 2, 3)"],
    ),
    "not_utf8": (
        {"items.csv": "item_id,category,price\n0,a,1.5\n1,caf\xe9,2.0\n2,c,9.99\n".encode("latin-1")},
        ["items.csv: cannot read the file: not UTF-8 text: line 3 has the byte 0xe9", "save the file as UTF-8"],
    ),
    "semicolon_separated": (
        {"users.csv": "user_id;age_bucket\n0;a\n1;b\n2;c\n"},
        ["users.csv: missing required column 'user_id' (columns found: user_id;age_bucket)"],
    ),
    "ragged_row": (
        with_line("interactions", 3, "1,1,2024-01-02 11:00:00,impression,0,extra"),
        ["interactions.csv: cannot read the file", "Expected 5 fields in line 3, saw 6"],
    ),
    "negative_timestamp": (
        with_line("interactions", 3, "1,1,-5,impression,0"),
        ["interactions.csv: column 'timestamp' has 1 timestamps before 1990-01-01", "e.g. line 3: timestamp='-5'"],
    ),
    "text_timestamp": (
        with_line("interactions", 3, "1,1,yesterday,impression,0"),
        ["interactions.csv: column 'timestamp'", "line 3: timestamp='yesterday'"],
    ),
    "empty_timestamp": (
        with_line("interactions", 3, "1,1,,impression,0"),
        ["interactions.csv: column 'timestamp' has 1 null values, e.g. line 3: timestamp=null"],
    ),
    "label_not_binary": (
        with_line("interactions", 3, "1,1,2024-01-02 11:00:00,impression,yes"),
        ["interactions.csv: column 'label' has 1 values other than 0 and 1, e.g. line 3: label='yes'"],
    ),
    "negative_id": (
        with_line("interactions", 3, "-3,1,2024-01-02 11:00:00,impression,0"),
        ["interactions.csv: column 'user_id' has 1 negative values, e.g. line 3: user_id=-3"],
    ),
    "unknown_item": (
        with_line("interactions", 3, "1,77,2024-01-02 11:00:00,impression,0"),
        ["interactions.csv: column 'item_id' has 1 rows referencing 1 item_id value(s) missing from items.csv",
         "e.g. line 3: item_id=77"],
    ),
    "unknown_user": (
        with_line("interactions", 3, "9,1,2024-01-02 11:00:00,impression,0"),
        ["interactions.csv: column 'user_id'", "missing from users.csv", "e.g. line 3: user_id=9"],
    ),
    "duplicate_item_id": (
        {"items.csv": "item_id,category,price\n0,a,1.5\n1,b,2.0\n2,c,9.99\n1,d,3.0\n"},
        ["items.csv: column 'item_id'", "duplicate", "line 5: item_id=1", "first seen at items.csv line 3"],
    ),
    "infinite_feature": (
        {"items.csv": "item_id,category,price\n0,a,1.5\n1,b,inf\n2,c,9.99\n"},
        ["items.csv: column 'price' has 1 infinite values", "e.g. line 3: price=inf"],
    ),
    "reserved_feature_name": (
        {"users.csv": "user_id,age_bucket,label\n0,a,1\n1,b,0\n2,c,1\n"},
        ["users.csv: feature column 'label' uses a reserved name"],
    ),
}


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the hash of its bytes: what "unchanged" is compared on."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A data root that already holds one data version (of the valid tables): the downstream state."""
    from recsys.data.ingest import ingest

    root = tmp_path_factory.mktemp("bad-inputs") / "data"
    ingest(write_folder(root.parent / "valid", valid_tables(), "csv"), root, negative_event_types=["impression"])
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_bad_landing_data_is_one_clear_line_and_leaves_the_data_root_as_it_was(case, data_root, tmp_path, capsys, monkeypatch):
    files, fragments = CASES[case]
    folder = write_folder(tmp_path / "landing", valid_tables(), "csv")
    for name, content in files.items():
        if content is None:
            (folder / name).unlink()
        elif isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    before = tree(data_root)
    assert len(before) == 4  # the one data version: 3 tables + its manifest
    monkeypatch.delenv("RECSYS_DEBUG", raising=False)

    assert main(["data", "ingest", str(folder), "--data-root", str(data_root)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"error: 1 problem(s) with the input data in {folder}:" in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert tree(data_root) == before


def test_a_folder_that_does_not_exist(data_root, tmp_path, capsys, monkeypatch):
    before = tree(data_root)
    monkeypatch.delenv("RECSYS_DEBUG", raising=False)
    assert main(["data", "ingest", str(tmp_path / "nope"), "--data-root", str(data_root)]) == 2
    assert f"{tmp_path / 'nope'}: input folder does not exist" in capsys.readouterr().err
    assert tree(data_root) == before


def test_generate_with_a_negative_count_names_it_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RECSYS_DEBUG", raising=False)
    out = tmp_path / "gen"
    assert main(["data", "generate", "--out", str(out), "--users", "-5", "--days", "0"]) == 2
    assert capsys.readouterr().err == "error: n_users=-5 must be >= 1; days=0 must be >= 1\n"
    assert not out.exists()


GOOD_EVENTS = "customer,sku,ts,clicked\n1,2,1704103200,1\n1,3,1704106800,0\n"
IMPORT_FLAGS = ["--user-col", "customer", "--item-col", "sku", "--time-col", "ts"]

# case id -> (events.csv, flags replacing or adding to IMPORT_FLAGS, fragments of the message)
IMPORT_CASES = {
    "no_such_column": (GOOD_EVENTS, ["--user-col", "user"], ["events.csv: no column 'user' (--user-col); columns found: customer, sku, ts, clicked"]),
    "no_such_file": (None, [], ["missing.csv: file not found"]),
    "one_column_two_roles": (GOOD_EVENTS, ["--time-col", "customer"], ["column 'customer' is given for more than one role (user_id, timestamp)"]),
    "timestamp_before_1990": (GOOD_EVENTS.replace("1704106800", "5"), [], ["events.csv: 1 row with a 'ts' before 1990-01-01", "line 3"]),
    "label_not_binary": (GOOD_EVENTS.replace(",0\n", ",yes\n"), ["--label-col", "clicked"], ["events.csv: 1 row with a 'clicked' other than 0/1/true/false", "clicked='yes'"]),
    "blank_user_id": (GOOD_EVENTS.replace("\n1,3,", "\n,3,"), [], ["events.csv: 1 row with a null or blank 'customer'", "line 3"]),
}


@pytest.mark.parametrize("case", list(IMPORT_CASES))
def test_a_bad_import_names_the_file_column_and_line_and_a_forced_import_keeps_the_old_folder(case, tmp_path, capsys, monkeypatch):
    events_text, flags, fragments = IMPORT_CASES[case]
    monkeypatch.delenv("RECSYS_DEBUG", raising=False)
    good, out = tmp_path / "good.csv", tmp_path / "out"
    good.write_text(GOOD_EVENTS)
    assert main(["data", "import", "--interactions", str(good), *IMPORT_FLAGS, "--out", str(out)]) == 0
    before = tree(out)
    capsys.readouterr()

    events = tmp_path / ("events.csv" if events_text is not None else "missing.csv")
    if events_text is not None:
        events.write_text(events_text)
    argv = ["data", "import", "--interactions", str(events), *IMPORT_FLAGS, *flags, "--out", str(out), "--force"]
    assert main(argv) == 2  # argparse keeps the last of a repeated flag: `flags` replace the defaults
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert tree(out) == before and "import.json" in before  # --force replaces the folder only once the new one is complete
