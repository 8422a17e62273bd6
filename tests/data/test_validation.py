"""Every validation rule, with a tiny bad file in parquet and in CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.contract import DataValidationError
from recsys.data.validation import validate_input
from recsys.errors import RecsysError


def where(fmt: str, row: int) -> str:
    """How messages locate a 0-based data row: parquet row N, CSV line N+2 (header is line 1)."""
    return f"row {row}" if fmt == "parquet" else f"line {row + 2}"


def problems_of(folder) -> list[str]:
    with pytest.raises(DataValidationError) as caught:
        validate_input(folder)
    assert isinstance(caught.value, RecsysError)
    return caught.value.problems


def only_problem(folder, *expected: str) -> str:
    problems = problems_of(folder)
    assert len(problems) == 1, problems
    for text in expected:
        assert text in problems[0], (text, problems[0])
    return problems[0]


def test_valid_input_is_normalized(make_input):
    tables = validate_input(make_input())
    inter = tables.interactions
    assert str(inter["user_id"].dtype) == "int64" and str(inter["item_id"].dtype) == "int64"
    assert str(inter["timestamp"].dtype) == "datetime64[ns]"
    assert str(inter["label"].dtype) == "int8"
    assert inter["timestamp"].iloc[0] == pd.Timestamp("2024-01-01 10:00:00")
    assert tables.has_labels
    assert list(tables.users.columns) == ["user_id", "age_bucket"]
    assert tables.items["price"].dtype == np.float64
    assert tables.items["category"].tolist() == ["a", "b", "c"]


def test_missing_table(make_input, fmt):
    folder = make_input()
    (folder / f"items.{fmt}").unlink()
    only_problem(folder, "items", "missing table", "items.parquet, items.csv")


def test_missing_folder(tmp_path):
    assert "does not exist" in problems_of(tmp_path / "nope")[0]


def test_unreadable_file(make_input, fmt):
    folder = make_input()
    bad = b"not a parquet file" if fmt == "parquet" else b"user_id,b\n1,2\n3,4,5,6\n"
    (folder / f"users.{fmt}").write_bytes(bad)
    only_problem(folder, f"users.{fmt}", "cannot read")


def test_empty_table(make_input, fmt):
    def mutate(t):
        t["users"] = t["users"].iloc[:0]

    only_problem(make_input(mutate), f"users.{fmt}", "empty")


def test_missing_required_column(make_input, fmt):
    def mutate(t):
        t["interactions"] = t["interactions"].drop(columns=["timestamp"])

    only_problem(make_input(mutate), f"interactions.{fmt}", "missing required column 'timestamp'")


def test_text_ids_in_one_table_and_integers_in_another(make_input, fmt):
    def mutate(t):
        t["interactions"]["user_id"] = ["0", "1", "abc", "0"]

    if fmt == "parquet":  # both tables are typed: they disagree, and both files are named
        message = only_problem(make_input(mutate), "interactions.parquet: column 'user_id' holds text ids")
        assert "row 0: user_id='0'" in message and "users.parquet holds integer ids (e.g. row 0: user_id=0)" in message
    else:  # CSV text adapts: both columns are text, so 'abc' is an unknown user
        only_problem(make_input(mutate), "interactions.csv", f"missing from users.csv, e.g. {where(fmt, 2)}: user_id='abc'")


def test_string_ids_are_valid_and_kept_as_written(make_input, fmt):
    def mutate(t):
        t["users"]["user_id"] = ["u-001", "001", "1"]
        t["interactions"]["user_id"] = ["u-001", "001", "1", "u-001"]
        t["items"]["item_id"] = ["85123A", "SKU-é", "0"]
        t["interactions"]["item_id"] = ["85123A", "SKU-é", "0", "SKU-é"]

    tables = validate_input(make_input(mutate))
    assert tables.id_kinds.to_dict() == {"user_id": "string", "item_id": "string"}
    assert tables.interactions["user_id"].tolist() == ["u-001", "001", "1", "u-001"]  # "001" is not 1
    assert tables.users["user_id"].tolist() == ["u-001", "001", "1"]
    assert all(isinstance(v, str) for v in tables.items["item_id"])
    assert tables.items["item_id"].dtype == object


def test_leading_zeros_make_a_csv_id_column_text(tmp_path):
    from data_helpers import valid_tables, write_folder

    folder = write_folder(tmp_path / "in", valid_tables(), "csv")
    (folder / "items.csv").write_text("item_id,category,price\n000,a,1.5\n001,b,2.0\n002,c,9.99\n")
    frame = valid_tables()["interactions"]
    frame["item_id"] = ["000", "001", "002", "001"]
    frame.to_csv(folder / "interactions.csv", index=False)
    tables = validate_input(folder)
    assert tables.id_kinds.item_id == "string" and tables.id_kinds.user_id == "int"
    assert tables.interactions["item_id"].tolist() == ["000", "001", "002", "001"]
    assert tables.items["item_id"].tolist() == ["000", "001", "002"]


def test_a_csv_column_adapts_to_the_typed_tables_kind(tmp_path):
    from data_helpers import valid_tables, write_table

    folder = tmp_path / "in"
    tables = valid_tables()
    # users.parquet holds text ids that look like numbers; interactions.csv adapts: "1" is the text id "1"
    write_table(folder, "users", tables["users"].assign(user_id=["0", "1", "2"]), "parquet")
    write_table(folder, "items", tables["items"], "parquet")
    write_table(folder, "interactions", tables["interactions"], "csv")
    out = validate_input(folder)
    assert out.id_kinds.to_dict() == {"user_id": "string", "item_id": "int"}
    assert out.interactions["user_id"].tolist() == ["0", "1", "2", "0"]
    assert out.interactions["item_id"].tolist() == [0, 1, 2, 1]

    # integer ids in the typed table: CSV text that is not an integer is refused, naming the typed file
    write_table(folder, "users", tables["users"], "parquet")
    write_table(folder, "interactions", tables["interactions"].assign(user_id=["0", "01", "2", "0"]), "csv")
    only_problem(folder, "interactions.csv: column 'user_id' has 1 non-integer values", "as in users.parquet", "line 3: user_id='01'")


def test_disagreeing_typed_tables_are_refused_naming_both_files(tmp_path):
    from data_helpers import valid_tables, write_folder

    tables = valid_tables()
    tables["items"]["item_id"] = ["0", "1", "2"]
    message = only_problem(write_folder(tmp_path / "in", tables, "parquet"), "column 'item_id'")
    assert message.startswith("items.parquet: column 'item_id' holds text ids (e.g. row 0: item_id='0')")
    assert "interactions.parquet holds integer ids (e.g. row 0: item_id=0)" in message


def test_a_column_mixing_integer_and_text_ids_is_refused_naming_a_row_of_each(tmp_path):
    from data_helpers import valid_tables, write_folder, write_table

    tables = valid_tables()
    inter = tables.pop("interactions")
    folder = write_folder(tmp_path / "in", tables, "parquet")
    write_table(folder / "interactions", "part-0", inter.iloc[:2], "parquet")
    write_table(folder / "interactions", "part-1", inter.iloc[2:].assign(user_id=["u2", "u0"]), "parquet")
    message = only_problem(folder, "interactions/: column 'user_id' mixes integer and text ids (2 integers, 2 texts)")
    assert "interactions/part-0.parquet row 0: user_id=0" in message
    assert "interactions/part-1.parquet row 0: user_id='u2'" in message

    # a CSV part next to a typed integer part adapts to integers: its text is refused with its line
    write_table(folder / "interactions", "part-1", inter.iloc[2:].assign(user_id=["2", "abc"]), "csv")
    (folder / "interactions" / "part-1.parquet").unlink()
    only_problem(
        folder, "interactions/part-1.csv: column 'user_id' has 1 non-integer values", "as in interactions/part-0.parquet",
        "line 3: user_id='abc'",
    )


@pytest.mark.parametrize(
    "bad, what",
    [
        ("", "empty ids"),
        (" u1", "ids with leading or trailing whitespace"),
        ("u1\u3000", "ids with leading or trailing whitespace"),  # an ideographic space
        ("u1\t", "ids with control characters"),
        ("u\x01", "ids with control characters"),
        ("u\x00x", "ids with control characters"),
        ("x" * 200 + "é" * 30, "ids longer than 256 UTF-8 bytes"),
    ],
    ids=["empty", "leading_space", "trailing_wide_space", "trailing_tab", "control", "nul", "too_long"],
)
def test_bad_string_ids_are_refused_with_an_example_row(tmp_path, bad, what):
    from data_helpers import valid_tables, write_folder

    tables = valid_tables()
    tables["users"]["user_id"] = ["u0", bad, "u2"]
    tables["interactions"]["user_id"] = ["u0", bad, "u2", "u0"]
    problems = problems_of(write_folder(tmp_path / "in", tables, "parquet"))
    assert len(problems) == 2, problems  # one per table
    for problem, table in zip(sorted(problems), ("interactions", "users")):
        assert problem.startswith(f"{table}.parquet: column 'user_id' has 1 {what}"), problem
        assert "e.g. row 1: user_id=" in problem


def test_a_256_byte_string_id_is_fine(tmp_path):
    from data_helpers import valid_tables, write_folder

    longest = "é" * 128  # 256 UTF-8 bytes
    tables = valid_tables()
    tables["users"]["user_id"] = ["u0", longest, "u2"]
    tables["interactions"]["user_id"] = ["u0", longest, "u2", "u0"]
    assert validate_input(write_folder(tmp_path / "in", tables, "parquet")).users["user_id"].iloc[1] == longest


def test_null_ids(make_input, fmt):
    def mutate(t):
        t["interactions"]["item_id"] = [0, 1, None, 1]

    only_problem(make_input(mutate), f"interactions.{fmt}", "column 'item_id'", "1 null", f"{where(fmt, 2)}: item_id=null")


def test_negative_ids(make_input, fmt):
    def mutate(t):
        t["interactions"]["user_id"] = [0, 1, -4, 0]

    only_problem(
        make_input(mutate), f"interactions.{fmt}", "column 'user_id'", "1 negative", f"{where(fmt, 2)}: user_id=-4"
    )


def test_duplicate_ids_in_users(make_input, fmt):
    def mutate(t):
        t["users"] = pd.concat([t["users"], t["users"].iloc[[1]]], ignore_index=True)

    message = only_problem(make_input(mutate), f"users.{fmt}", "column 'user_id'", "duplicate", f"{where(fmt, 3)}: user_id=1")
    assert f"first seen at users.{fmt} {where(fmt, 1)}" in message


def test_duplicate_ids_in_items(make_input, fmt):
    def mutate(t):
        t["items"] = pd.concat([t["items"], t["items"].iloc[[2]]], ignore_index=True)

    only_problem(make_input(mutate), f"items.{fmt}", "column 'item_id'", "duplicate", f"{where(fmt, 3)}: item_id=2")


def test_duplicate_interaction_rows(make_input, fmt):
    def mutate(t):
        t["interactions"] = pd.concat([t["interactions"], t["interactions"].iloc[[1]]], ignore_index=True)

    message = only_problem(make_input(mutate), f"interactions.{fmt}", "1 duplicate interaction rows", where(fmt, 4))
    assert "user_id=1" in message and f"repeats interactions.{fmt} {where(fmt, 1)}" in message


@pytest.mark.parametrize(
    "bad_time",
    [pd.Timestamp("1985-06-01"), pd.Timestamp.now().normalize() + pd.Timedelta(days=3)],
    ids=["too_old", "future"],
)
def test_timestamp_out_of_range(make_input, fmt, bad_time):
    def mutate(t):
        t["interactions"].loc[3, "timestamp"] = bad_time

    only_problem(
        make_input(mutate),
        f"interactions.{fmt}",
        "column 'timestamp'",
        "before 1990-01-01 or more than 1 day in the future",
        f"{where(fmt, 3)}: timestamp=",
        str(bad_time.year),
    )


def test_unix_seconds_out_of_range(make_input, fmt):
    def mutate(t):
        t["interactions"]["timestamp"] = [1704103200, 1704103200, 1704103200 * 1000, 1704103200]

    only_problem(make_input(mutate), f"interactions.{fmt}", "unix seconds", f"{where(fmt, 2)}: timestamp=1704103200000")


def test_text_that_is_not_a_timestamp(make_input, fmt):
    def mutate(t):
        t["interactions"]["timestamp"] = ["2024-01-01", "yesterday", "2024-01-03", "2024-01-04"]

    only_problem(make_input(mutate), f"interactions.{fmt}", "not timestamps", f"{where(fmt, 1)}: timestamp='yesterday'")


def test_label_not_binary(make_input, fmt):
    def mutate(t):
        t["interactions"]["label"] = [1, 0, 2, 1]

    only_problem(make_input(mutate), f"interactions.{fmt}", "column 'label'", "other than 0 and 1", f"{where(fmt, 2)}: label=2")


def test_unknown_users(make_input, fmt):
    def mutate(t):
        t["interactions"]["user_id"] = [0, 99, 99, 0]

    message = only_problem(
        make_input(mutate), f"interactions.{fmt}", "column 'user_id'", f"missing from users.{fmt}", f"{where(fmt, 1)}: user_id=99"
    )
    assert "2 rows referencing 1 user_id" in message


def test_unknown_items(make_input, fmt):
    def mutate(t):
        t["interactions"]["item_id"] = [0, 1, 7, 1]

    only_problem(make_input(mutate), f"interactions.{fmt}", "column 'item_id'", f"missing from items.{fmt}", "item_id=7")


def test_feature_names_shared_by_users_and_items(make_input, fmt):
    def mutate(t):
        t["items"]["age_bucket"] = ["x", "y", "z"]

    only_problem(make_input(mutate), f"items.{fmt}", "'age_bucket'", f"users.{fmt}")


def test_reserved_feature_name(make_input, fmt):
    def mutate(t):
        t["users"]["label"] = [1, 0, 1]

    only_problem(make_input(mutate), f"users.{fmt}", "'label'", "reserved")


def test_every_problem_is_listed_at_once(make_input, fmt):
    def mutate(t):
        t["interactions"]["user_id"] = [0, 1, -1, 0]
        t["interactions"]["label"] = [1, 5, 1, 1]
        t["users"]["user_id"] = [0, 0, 2]
        t["items"] = t["items"].drop(columns=["item_id"])

    problems = problems_of(make_input(mutate))
    text = "\n".join(problems)
    assert len(problems) == 4, problems
    for part in ("negative", "other than 0 and 1", "duplicate values", "missing required column 'item_id'"):
        assert part in text


def test_timestamp_formats_are_normalized_to_utc(make_input):
    def mutate(t):
        t["interactions"]["timestamp"] = [1704103200, 1704189600, 1704276000, 1704362400]

    tables = validate_input(make_input(mutate))
    assert tables.interactions["timestamp"].iloc[0] == pd.Timestamp("2024-01-01 10:00:00")


def test_iso_text_with_offsets_becomes_utc(tmp_path):
    from data_helpers import valid_tables, write_folder

    tables = valid_tables()
    tables["interactions"]["timestamp"] = [
        "2024-01-01T12:00:00+02:00",
        "2024-01-02T10:00:00Z",
        "2024-01-03 10:00:00",
        "2024-01-04T10:00:00.500",
    ]
    out = validate_input(write_folder(tmp_path / "in", tables, "csv")).interactions["timestamp"]
    assert out.iloc[0] == pd.Timestamp("2024-01-01 10:00:00")
    assert out.iloc[1] == pd.Timestamp("2024-01-02 10:00:00")
    assert out.iloc[3] == pd.Timestamp("2024-01-04 10:00:00.500")


def test_timezone_aware_parquet_becomes_utc_naive(tmp_path):
    from data_helpers import valid_tables, write_folder

    tables = valid_tables()
    tables["interactions"]["timestamp"] = tables["interactions"]["timestamp"].dt.tz_localize("Europe/Paris")
    out = validate_input(write_folder(tmp_path / "in", tables, "parquet")).interactions["timestamp"]
    assert str(out.dtype) == "datetime64[ns]"
    assert out.iloc[0] == pd.Timestamp("2024-01-01 09:00:00")


def test_table_as_folder_of_parts(tmp_path):
    from data_helpers import valid_tables, write_folder, write_table

    tables = valid_tables()
    inter = tables.pop("interactions")
    folder = write_folder(tmp_path / "in", tables, "parquet")
    write_table(folder / "interactions", "part-0", inter.iloc[:2], "parquet")
    bad = inter.iloc[2:].copy()
    bad["item_id"] = [2, 42]
    write_table(folder / "interactions", "part-1", bad, "csv")
    (folder / "interactions" / "_SUCCESS").write_text("")
    problems = problems_of(folder)
    assert len(problems) == 1
    assert "interactions/part-1.csv" in problems[0] and "line 3: item_id=42" in problems[0]

    bad["item_id"] = [2, 1]
    write_table(folder / "interactions", "part-1", bad, "csv")
    assert len(validate_input(folder).interactions) == 4


def test_labels_are_optional(make_input):
    def mutate(t):
        t["interactions"] = t["interactions"].drop(columns=["label", "event_type"])

    tables = validate_input(make_input(mutate))
    assert not tables.has_labels
    assert list(tables.interactions.columns) == ["user_id", "item_id", "timestamp"]


def test_extra_interaction_columns_are_dropped_with_a_warning(make_input):
    def mutate(t):
        t["interactions"]["rating"] = [5.0, 3.0, 4.0, 1.0]

    tables = validate_input(make_input(mutate))
    assert "rating" not in tables.interactions.columns
    assert any("rating" in w for w in tables.warnings)


def test_validation_is_fast_on_a_million_rows(tmp_path):
    rng = np.random.default_rng(0)
    n = 1_000_000
    inter = pd.DataFrame(
        {
            "user_id": rng.integers(0, 10_000, n),
            "item_id": rng.integers(0, 2_000, n),
            "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n), unit="s"),
            "label": rng.integers(0, 2, n).astype("int8"),
        }
    )
    folder = tmp_path / "big"
    folder.mkdir()
    inter.to_parquet(folder / "interactions.parquet", index=False)
    pd.DataFrame({"user_id": np.arange(10_000)}).to_parquet(folder / "users.parquet", index=False)
    pd.DataFrame({"item_id": np.arange(2_000)}).to_parquet(folder / "items.parquet", index=False)
    import time

    started = time.monotonic()
    tables = validate_input(folder)
    elapsed = time.monotonic() - started
    assert len(tables.interactions) == n
    assert elapsed < 15, f"validation of 1M rows took {elapsed:.1f} s"


# --------------------------------------------------------------------------------------------
# A table is its single file plus its folder of parts; live parts (docs/layouts.md, section 1)


def live_folder(tmp_path, mutate=None):
    """valid_tables as parquet: interactions.parquet holds the user's own rows, live parts go beside it."""
    from data_helpers import valid_tables, write_folder

    tables = valid_tables()
    if mutate is not None:
        mutate(tables)
    return write_folder(tmp_path / "in", tables, "parquet")


def test_a_table_is_its_single_file_plus_its_parts(tmp_path):
    from data_helpers import valid_tables, write_folder, write_table

    tables = valid_tables()
    inter = tables["interactions"]
    tables["interactions"] = inter.iloc[:2]
    folder = write_folder(tmp_path / "in", tables, "parquet")
    (folder / "interactions.csv").write_text("not,read\n1,2\n")  # the parquet single file wins
    write_table(folder / "interactions", "part-0", inter.iloc[2:], "parquet")
    out = validate_input(folder)
    assert out.interactions["user_id"].tolist() == [0, 1, 2, 0]
    assert [p.relative_to(folder).as_posix() for p in out.files["interactions"]] == [
        "interactions.parquet",
        "interactions/part-0.parquet",
    ]

    write_table(folder / "interactions", "part-0", inter.iloc[2:].assign(item_id=[2, 42]), "parquet")
    only_problem(folder, "interactions/part-0.parquet: column 'item_id'", "row 1: item_id=42")


def test_live_part_name_and_metadata_round_trip(tmp_path):
    from data_helpers import live_events, write_live_part

    from recsys.data.contract import LivePart, is_live_part, live_part, live_part_metadata, live_part_name

    assert live_part_name("1733520000000-0", 250) == "events-1733520000000-0-250.parquet"
    path = write_live_part(tmp_path, live_events([0, 1], [1, 2], [1, 2], ["click", "view"]), "1733520000000-0", "1733520000999-3")
    assert path.name == "events-1733520000000-0-2.parquet"
    assert live_part(path) == LivePart("1733520000000-0", "1733520000999-3", 2) and is_live_part(path)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # the temp file was renamed
    plain = tmp_path / "plain.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(plain)
    assert not is_live_part(plain) and not is_live_part(tmp_path / "part.csv")
    for first, last in (("1733520000000", "1733520000000-1"), ("5-0", "4-9"), ("1-0", "x-1")):
        with pytest.raises(ValueError):
            live_part_metadata(first, last, 1)


def test_live_rows_of_new_users_are_valid_and_labelled_by_event_type(tmp_path):
    from data_helpers import live_events, write_live_part

    folder = live_folder(tmp_path)
    events = live_events([7, 0, 9, 7], [0, 1, 2, 2], [1, 2, 3, 4], ["impression", "click", "purchase", "view"],
                         ["r-1", None, "r-2", None])
    write_live_part(folder, events, "1704412800000-0", "1704423600000-0")
    out = validate_input(folder, negative_event_types=["impression", "view"])
    inter = out.interactions
    assert len(inter) == 8 and out.new_users == [7, 9]
    assert inter["label"].tolist() == [1, 0, 1, 1, 0, 1, 1, 0] and str(inter["label"].dtype) == "int8"
    assert inter["request_id"].tolist() == [None] * 4 + ["r-1", None, "r-2", None]
    assert len(out.users) == 3  # ingest adds the new users, validation only names them
    assert out.live.to_dict() == {
        "parts": 1, "rows": 4, "new_users": 2, "duplicates_dropped": 0, "newest_stream_id": "1704423600000-0"
    }
    assert not out.warnings


def test_live_labels_default_to_the_settings_negative_event_types(tmp_path, monkeypatch):
    from data_helpers import live_events, write_live_part

    from recsys.settings import get_settings

    folder = live_folder(tmp_path)
    write_live_part(folder, live_events([0, 1], [1, 2], [1, 2], ["impression", "click"]), "1-0", "2-0")
    monkeypatch.setenv("RECSYS_NEGATIVE_EVENT_TYPES", "click")
    get_settings.cache_clear()
    try:
        labels = validate_input(folder).interactions["label"].tolist()[4:]
    finally:
        get_settings.cache_clear()
    assert labels == [1, 0]


def test_without_labels_live_rows_get_none_and_negative_types_are_left_out(tmp_path):
    from data_helpers import live_events, write_live_part

    folder = live_folder(tmp_path, lambda t: t.update(interactions=t["interactions"].drop(columns="label")))
    write_live_part(folder, live_events([0, 1], [1, 2], [1, 2], ["impression", "click"]), "1-0", "2-0")
    out = validate_input(folder, negative_event_types=["impression"])
    assert not out.has_labels
    assert list(out.interactions.columns) == ["user_id", "item_id", "timestamp", "event_type", "request_id"]
    # an impression without labels would train as an engagement: only the click is kept
    assert len(out.interactions) == 5 and out.interactions["event_type"].tolist()[-1] == "click"  # 4 own rows + the click
    assert any("1 live rows of event types impression were left out" in w for w in out.warnings)


def test_unknown_users_of_the_users_own_files_stay_an_error(tmp_path):
    from data_helpers import live_events, write_live_part

    def mutate(t):
        t["interactions"]["user_id"] = [0, 99, 1, 0]

    folder = live_folder(tmp_path, mutate)
    write_live_part(folder, live_events([99, 7], [1, 2], [1, 2], ["click", "click"]), "1-0", "2-0")
    message = only_problem(folder, "interactions.parquet: column 'user_id' has 1 rows referencing 1 user_id", "row 1: user_id=99")
    assert "events-" not in message


def test_unknown_items_in_live_rows_name_the_part_and_row(tmp_path):
    from data_helpers import live_events, write_live_part

    folder = live_folder(tmp_path)
    write_live_part(folder, live_events([0, 7], [1, 42], [1, 2], ["click", "click"]), "1733520000000-0", "1733520000001-0")
    only_problem(folder, "interactions/events-1733520000000-0-2.parquet: column 'item_id' has 1 rows", "row 1: item_id=42")


def test_a_live_row_repeating_an_interaction_is_dropped_with_a_warning(tmp_path):
    from data_helpers import live_events, write_live_part

    folder = live_folder(tmp_path)
    # repeats interactions.parquet row 1 (user 1, item 1, 2024-01-02 11:00, impression), then a new event
    first = live_events([1, 2], [1, 0], [0, 1], ["impression", "click"]).assign(
        timestamp=[pd.Timestamp("2024-01-02 11:00"), pd.Timestamp("2024-01-05 01:00")]
    )
    write_live_part(folder, first, "1-0", "2-0")
    # the same event delivered twice (another part), and one at the same time of another type (kept)
    again = live_events([2, 2], [0, 0], [1, 1], ["click", "purchase"])
    write_live_part(folder, again, "3-0", "4-0")
    out = validate_input(folder, negative_event_types=["impression"])
    assert len(out.interactions) == 4 + 2
    assert out.interactions["event_type"].tolist()[4:] == ["click", "purchase"]
    assert out.live.duplicates_dropped == 2 and out.live.rows == 4
    (warning,) = out.warnings
    assert warning.startswith("interactions/events-1-0-2.parquet: 2 live event rows repeat an interaction")
    assert "row 0: user_id=1" in warning and "repeats interactions.parquet row 1" in warning

    def mutate(t):  # repeats among the user's own rows stay an error, live parts or not
        t["interactions"] = pd.concat([t["interactions"], t["interactions"].iloc[[1]]], ignore_index=True)

    folder = live_folder(tmp_path / "own", mutate)
    write_live_part(folder, again, "3-0", "4-0")
    only_problem(folder, "interactions.parquet: 1 duplicate interaction rows", "row 4")


def test_own_files_without_event_type_keep_none_of_it(tmp_path):
    from data_helpers import live_events, write_live_part

    folder = live_folder(tmp_path, lambda t: t.update(interactions=t["interactions"].drop(columns="event_type")))
    write_live_part(folder, live_events([0, 0], [1, 1], [1, 1], ["impression", "click"]), "1-0", "1-1")
    out = validate_input(folder, negative_event_types=["impression"])
    assert list(out.interactions.columns) == ["user_id", "item_id", "timestamp", "label", "request_id"]
    assert out.interactions["label"].tolist()[4:] == [0, 1]  # same time, told apart by the label
    assert any("event_type of 2 live rows was not kept: interactions.parquet has no event_type" in w for w in out.warnings)


def test_only_live_parts_make_a_table(tmp_path):
    from data_helpers import live_events, write_live_part

    folder = live_folder(tmp_path)
    (folder / "interactions.parquet").unlink()
    write_live_part(folder, live_events([0, 5], [1, 2], [1, 2], ["click", "view"]), "1-0", "2-0")
    out = validate_input(folder)
    assert out.new_users == [5] and not out.has_labels and len(out.interactions) == 2


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ({b"recsys.source": b"events"}, "recsys.stream_first is missing"),
        ({b"recsys.source": b"events", b"recsys.stream_first": b"1-0", b"recsys.stream_last": b"1-0",
          b"recsys.events": b"3"}, "recsys.events=3 but it holds 1 rows"),
        ({b"recsys.source": b"events", b"recsys.stream_first": b"1-0", b"recsys.stream_last": b"yesterday",
          b"recsys.events": b"1"}, "'yesterday' is not a stream entry id"),
    ],
    ids=["missing_key", "row_count", "bad_stream_id"],
)
def test_a_malformed_live_part_is_refused_naming_it(tmp_path, metadata, expected):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_helpers import live_events

    folder = live_folder(tmp_path)
    (folder / "interactions").mkdir()
    table = pa.Table.from_pandas(live_events([0], [1], [1], ["click"]), preserve_index=False)
    pq.write_table(table.replace_schema_metadata(metadata), folder / "interactions" / "events-1-0-1.parquet")
    only_problem(folder, "interactions/events-1-0-1.parquet:", expected)


def test_a_live_part_without_event_type_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_helpers import live_events

    from recsys.data.contract import live_part_metadata

    folder = live_folder(tmp_path)
    (folder / "interactions").mkdir()
    table = pa.Table.from_pandas(live_events([0], [1], [1], ["click"]).drop(columns="event_type"), preserve_index=False)
    table = table.replace_schema_metadata(live_part_metadata("1-0", "1-0", 1))
    pq.write_table(table, folder / "interactions" / "events-1-0-1.parquet")
    only_problem(folder, "interactions/events-1-0-1.parquet: missing required column 'event_type'")


def test_request_id_in_a_users_file_is_kept_with_its_nulls(make_input, fmt):
    def mutate(t):
        t["interactions"]["request_id"] = ["r-1", None, "r-2", None]

    out = validate_input(make_input(mutate))
    assert out.interactions["request_id"].tolist() == ["r-1", None, "r-2", None]
    assert not out.warnings
