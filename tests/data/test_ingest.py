"""Ingest: validated input -> data version folder (docs/layouts.md, section 2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_helpers import live_events, valid_tables, write_folder, write_live_part
from recsys.data.contract import DataValidationError
from recsys.data.ingest import ingest, load_data_version


def test_ingest_writes_a_data_version(make_input, tmp_path):
    root = tmp_path / "data"
    version = ingest(make_input(), root)
    assert version.created and len(version.version) == 12
    assert version.path == root / version.version
    assert sorted(p.name for p in version.path.iterdir()) == [
        "interactions.parquet",
        "items.parquet",
        "manifest.json",
        "users.parquet",
    ]
    manifest = version.manifest
    assert manifest["data_version"] == version.version
    assert manifest["rows"] == {"interactions": 4, "users": 3, "items": 3}
    assert manifest["has_labels"] is True
    assert manifest["features"]["items"] == {"categorical": ["category"], "continuous": ["price"]}
    assert manifest["time_range"] == {"min": "2024-01-01T10:00:00", "max": "2024-01-04T13:00:00"}
    assert len(manifest["input_hashes"]) == 3 and all(len(h) == 64 for h in manifest["input_hashes"].values())
    assert manifest["live_events"] == {
        "parts": 0, "rows": 0, "new_users": 0, "duplicates_dropped": 0, "newest_stream_id": None
    }
    tables = load_data_version(version.path)
    assert str(tables["interactions"]["timestamp"].dtype) == "datetime64[ns]"
    assert str(tables["interactions"]["label"].dtype) == "int8"
    assert tables["interactions"]["user_id"].tolist() == [0, 1, 2, 0]


def test_ingest_twice_is_a_noop(make_input, tmp_path):
    root = tmp_path / "data"
    first = ingest(make_input(), root)
    mtime = (first.path / "manifest.json").stat().st_mtime_ns
    second = ingest(make_input(name="again"), root)
    assert not second.created
    assert second.version == first.version
    assert (first.path / "manifest.json").stat().st_mtime_ns == mtime
    assert [p.name for p in root.iterdir()] == [first.version]


def test_same_content_as_csv_or_parquet_gives_the_same_version(tmp_path):
    a = ingest(write_folder(tmp_path / "pq", valid_tables(), "parquet"), tmp_path / "data")
    b = ingest(write_folder(tmp_path / "csv", valid_tables(), "csv"), tmp_path / "data")
    assert a.version == b.version


def test_different_content_gives_a_new_version(make_input, tmp_path):
    root = tmp_path / "data"
    first = ingest(make_input(), root)

    def mutate(t):
        t["users"]["age_bucket"] = ["18-24", "25-34", "35-44"]

    second = ingest(make_input(mutate, name="changed"), root)
    assert second.version != first.version
    assert len(list(root.iterdir())) == 2


def test_failed_ingest_leaves_nothing(make_input, tmp_path):
    root = tmp_path / "data"

    def mutate(t):
        t["interactions"]["label"] = [1, 0, 3, 1]

    with pytest.raises(DataValidationError, match="label"):
        ingest(make_input(mutate), root)
    assert not root.exists() or list(root.iterdir()) == []


def test_failure_while_writing_leaves_no_temp_dir(make_input, tmp_path, monkeypatch):
    # a real disk-full is hard to cause; make the parquet writer fail instead
    import recsys.data.ingest as ingest_module

    def broken_writer(frame, path):
        path.write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(ingest_module, "write_parquet", broken_writer)
    root = tmp_path / "data"
    with pytest.raises(OSError):
        ingest(make_input(), root)
    assert list(root.iterdir()) == []


def test_ingest_defaults_to_the_settings_data_root(make_input, tmp_path, monkeypatch):
    from recsys.settings import get_settings

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        version = ingest(make_input())
    finally:
        get_settings.cache_clear()
    assert version.path.parent == tmp_path / "home" / "data"


# Data versions of integer datasets as computed by the code before id kinds existed (main at 4095f37,
# both runtimes gave the same): recording the kinds in the manifest must not change a single one.
# (MovieLens is not among them: its importer's tables changed on purpose since, year from the title.)
MAIN_DATA_VERSIONS = {"valid_tables": "fe746d4ef264", "synthetic": "e0bea69970dc"}


def test_integer_data_keeps_the_data_version_it_had_before_id_kinds(tmp_path, fmt):
    from recsys.data.synthetic import SyntheticConfig, generate_tables

    version = ingest(write_folder(tmp_path / "small", valid_tables(), fmt), tmp_path / "data")
    assert version.version == MAIN_DATA_VERSIONS["valid_tables"]
    assert version.manifest["ids"] == {"user_id": "int", "item_id": "int"}

    synthetic = generate_tables(SyntheticConfig(n_users=300, n_items=200, n_interactions=6000, seed=3))
    synthetic["interactions"] = synthetic["interactions"].astype({"event_type": str})
    assert ingest(write_folder(tmp_path / "synthetic", synthetic, fmt), tmp_path / "data").version == MAIN_DATA_VERSIONS["synthetic"]


def test_string_ids_are_recorded_and_csv_or_parquet_give_the_same_version(tmp_path):
    tables = valid_tables()
    tables["users"]["user_id"] = ["u-7f3a", "001", "1"]
    tables["interactions"]["user_id"] = ["u-7f3a", "001", "1", "u-7f3a"]
    a = ingest(write_folder(tmp_path / "pq", tables, "parquet"), tmp_path / "data")
    b = ingest(write_folder(tmp_path / "csv", tables, "csv"), tmp_path / "data")
    assert a.version == b.version and not b.created
    assert a.manifest["ids"] == {"user_id": "string", "item_id": "int"}
    assert a.manifest["columns"]["users"]["user_id"] == "object"
    stored = load_data_version(a.path)
    assert stored["users"]["user_id"].tolist() == ["u-7f3a", "001", "1"]
    assert stored["interactions"]["item_id"].dtype == "int64"
    assert a.version != ingest(write_folder(tmp_path / "ints", valid_tables(), "parquet"), tmp_path / "data").version


# --------------------------------------------------------------------------------------------
# Live parts (docs/layouts.md, sections 1 and 2)

# The data version of live_landing(): new users with empty features, as both runtimes compute it.
LIVE_DATA_VERSION = "07ed8c7e00c3"


def tables_with_typed_user_features():
    """valid_tables with text, int, bool and float user features."""
    tables = valid_tables()
    tables["users"] = tables["users"].assign(
        tier=np.array([1, 2, 1], dtype="int16"), premium=[True, False, True], score=[0.5, 1.5, 2.5]
    )
    return tables


def live_landing(folder):
    """tables_with_typed_user_features plus two live parts: new users 7 and 9, a repeated event, request ids."""
    write_folder(folder, tables_with_typed_user_features(), "parquet")
    first = live_events([7, 0], [0, 2], [1, 2], ["click", "impression"], ["r-1", None])
    write_live_part(folder, first, "1704416400000-0", "1704420000000-0")
    write_live_part(folder, live_events([9, 7], [1, 0], [3, 1], ["view", "click"]), "1704423600000-0", "1704423600000-1")
    return folder


def test_ingest_adds_new_live_users_with_empty_features(tmp_path):
    plain = ingest(write_folder(tmp_path / "plain", tables_with_typed_user_features(), "parquet"), tmp_path / "data")
    version = ingest(live_landing(tmp_path / "in"), tmp_path / "data", negative_event_types=["impression"])
    assert version.version == LIVE_DATA_VERSION  # the same in both runtimes (see _row_hashes)
    manifest = version.manifest
    assert manifest["live_events"] == {
        "parts": 2, "rows": 4, "new_users": 2, "duplicates_dropped": 1, "newest_stream_id": "1704423600000-1"
    }
    assert manifest["rows"] == {"interactions": 7, "users": 5, "items": 3}
    assert sorted(manifest["input_hashes"]) == [
        "interactions.parquet", "interactions/events-1704416400000-0-2.parquet",
        "interactions/events-1704423600000-0-2.parquet", "items.parquet", "users.parquet",
    ]
    # every feature keeps its kind: ints and booleans stay categorical, floats continuous
    assert manifest["features"]["users"] == plain.manifest["features"]["users"] == {
        "categorical": ["age_bucket", "tier", "premium"], "continuous": ["score"]
    }
    assert manifest["columns"]["users"] == {
        "user_id": "int64", "age_bucket": "object", "tier": "Int16", "premium": "boolean", "score": "float64"
    }
    users = load_data_version(version.path)["users"]
    assert users["user_id"].tolist() == [0, 1, 2, 7, 9]
    assert users.iloc[3:]["age_bucket"].tolist() == [None, None]
    assert users.iloc[3:][["tier", "premium"]].isna().all().all() and users["score"].iloc[3:].isna().all()
    assert users["tier"].tolist()[:3] == [1, 2, 1] and users["premium"].tolist()[:3] == [True, False, True]
    inter = load_data_version(version.path)["interactions"]
    assert inter["label"].tolist() == [1, 0, 1, 1, 1, 0, 1]
    assert inter["request_id"].tolist() == [None] * 4 + ["r-1", None, None]
    assert ingest(live_landing(tmp_path / "again"), tmp_path / "data", negative_event_types=["impression"]).created is False


def test_text_user_ids_of_new_live_users(tmp_path):
    tables = valid_tables()
    tables["users"]["user_id"] = ["u0", "u1", "u2"]
    tables["interactions"]["user_id"] = ["u0", "u1", "u2", "u0"]
    folder = write_folder(tmp_path / "in", tables, "parquet")
    write_live_part(folder, live_events(["u-new"], [1], [1], ["click"]), "1-0", "1-0")
    stored = load_data_version(ingest(folder, tmp_path / "data", negative_event_types=[]).path)
    assert stored["users"]["user_id"].tolist() == ["u0", "u1", "u2", "u-new"]
    assert stored["users"]["age_bucket"].tolist() == ["18-24", "25-34", "55+", None]


def test_hidden_and_underscore_files_in_the_parts_folder_are_never_read(tmp_path):
    folder = write_folder(tmp_path / "in", valid_tables(), "parquet")
    # a whole live part that is still hidden (the writer's temp name) and would fail validation if read
    part = write_live_part(tmp_path / "scratch", live_events([0], [42], [1], ["click"]), "1-0", "1-0")
    (folder / "interactions").mkdir()
    part.rename(folder / "interactions" / f".{part.name}")
    (folder / "interactions" / ".events-2-0-1.parquet.tmp").write_bytes(b"half a parquet file")
    (folder / "interactions" / "_events-3-0-1.parquet").write_bytes(b"half a parquet file")
    (folder / "interactions" / "_SUCCESS").write_text("")
    version = ingest(folder, tmp_path / "data")
    assert version.version == MAIN_DATA_VERSIONS["valid_tables"]
    assert sorted(version.manifest["input_hashes"]) == ["interactions.parquet", "items.parquet", "users.parquet"]


def test_a_part_renamed_into_place_during_ingest_waits_for_the_next_one(tmp_path, monkeypatch):
    import recsys.data.ingest as ingest_module

    folder = write_folder(tmp_path / "in", valid_tables(), "parquet")
    write_live_part(folder, live_events([0], [1], [1], ["click"]), "1-0", "1-0")
    real_validate = ingest_module.validate_input

    def validate_then_a_part_lands(*args, **kwargs):
        tables = real_validate(*args, **kwargs)
        write_live_part(folder, live_events([1], [2], [2], ["click"]), "2-0", "2-0")
        return tables

    monkeypatch.setattr(ingest_module, "validate_input", validate_then_a_part_lands)
    first = ingest(folder, tmp_path / "data", negative_event_types=[])
    monkeypatch.setattr(ingest_module, "validate_input", real_validate)
    assert first.manifest["rows"]["interactions"] == 5 and first.manifest["live_events"]["parts"] == 1
    assert "interactions/events-2-0-1.parquet" not in first.manifest["input_hashes"]
    assert len(load_data_version(first.path)["interactions"]) == 5

    second = ingest(folder, tmp_path / "data", negative_event_types=[])
    assert second.created and second.manifest["rows"]["interactions"] == 6
    assert "interactions/events-2-0-1.parquet" in second.manifest["input_hashes"]
