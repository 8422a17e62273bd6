"""The NVTabular ETL on a small data version: layout, encodings, statistics, split, idempotence,
failure cleanup, and the saved workflows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from merlin.io import Dataset
from merlin.schema import Tags

from features_helpers import write_data_version
from recsys.features.etl import EtlError, run_etl
from recsys.features.split import ValidationSplit

# merlin.io warns on every CPU Dataset; CPU is this project's normal case.
pytestmark = pytest.mark.filterwarnings("ignore:Initializing an NVTabular Dataset in CPU mode:UserWarning")


OOV = 2  # NVTabular 23.08 Categorify: 0 reserved, 1 null, 2 out-of-vocabulary, 3.. known values
FIRST_KNOWN = 3
DAY = 86_400


def _read(path: Path) -> pd.DataFrame:
    return Dataset(path, engine="parquet", cpu=True).to_ddf().compute().reset_index(drop=True)


def _raw(data: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    interactions = pd.read_parquet(data / "interactions.parquet")
    interactions["ts"] = interactions["timestamp"].astype("int64") // 10**9
    return interactions, pd.read_parquet(data / "users.parquet"), pd.read_parquet(data / "items.parquet")


def _train_window(interactions: pd.DataFrame, days: int = 7) -> pd.DataFrame:
    return interactions[interactions["ts"] < interactions["ts"].max() - days * DAY]


def test_layout_and_manifest(built):
    data, features_root, result = built
    path = features_root / result.version
    assert result.path == path and sorted(p.name for p in features_root.iterdir()) == [result.version]
    for part in ("train", "valid", "users", "items", "workflows/user", "workflows/item"):
        assert (path / part).is_dir(), part
    assert (path / "id_maps" / "users.parquet").is_file() and (path / "id_maps" / "items.parquet").is_file()

    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest == result.manifest
    assert manifest["feature_version"] == result.version and manifest["data_version"] == "d0d0d0d0d0d0"
    assert manifest["validation_days"] == 7 and manifest["has_labels"] is True
    assert manifest["columns"] == {
        "user_id": "user_id",
        "item_id": "item_id",
        "target": "click",
        "timestamp": "timestamp",
        "user_categorical": ["country", "is_premium"],
        "user_continuous": ["age"],
        "item_categorical": ["category", "brand"],
        "item_continuous": ["price"],
    }
    interactions, users, items = _raw(data)
    assert manifest["rows"] == {
        "train": len(_train_window(interactions)),
        "valid": len(interactions) - len(_train_window(interactions)),
        "users": len(users),
        "items": len(items),
    }
    assert set(manifest["input_hashes"]) == {"interactions", "users", "items"}
    assert manifest["schema"]["click"]["tags"] == ["binary_classification", "target"]

    train = _read(path / "train")
    assert list(train.columns) == [
        "user_id", "country", "is_premium", "age", "item_id", "category", "brand", "price", "click", "timestamp"
    ]
    # Embedding tables must hold every encoded index seen anywhere.
    for column, size in manifest["cardinalities"].items():
        table = path / ("users" if column in ("user_id", "country", "is_premium") else "items")
        assert _read(table)[column].max() < size, column
        assert train[column].max() < size, column
    # vocabulary of user ids = users with any interaction (validation ones too) + the 3 reserved indices
    assert manifest["cardinalities"]["user_id"] == interactions["user_id"].nunique() + FIRST_KNOWN


def test_train_schema_tags(built):
    _, _, result = built
    schema = Dataset(result.path / "train", engine="parquet", cpu=True).schema
    assert schema.select_by_tag(Tags.USER_ID).column_names == ["user_id"]
    assert schema.select_by_tag(Tags.ITEM_ID).column_names == ["item_id"]
    assert schema.select_by_tag(Tags.TARGET).column_names == ["click"]
    assert schema.select_by_tag(Tags.BINARY_CLASSIFICATION).column_names == ["click"]
    assert set(schema.select_by_tag(Tags.USER).column_names) == {"user_id", "country", "is_premium", "age"}
    assert set(schema.select_by_tag(Tags.ITEM).column_names) == {"item_id", "category", "brand", "price"}
    assert set(schema.select_by_tag(Tags.CONTINUOUS).column_names) == {"age", "price"}
    assert set(schema.select_by_tag(Tags.CATEGORICAL).column_names) == {
        "user_id", "country", "is_premium", "item_id", "category", "brand"
    }
    # embedding sizes travel in the schema too (merlin-models reads them)
    assert schema["item_id"].int_domain.max + 1 == result.manifest["cardinalities"]["item_id"]
    users_schema = Dataset(result.path / "users", engine="parquet", cpu=True).schema
    assert users_schema.select_by_tag(Tags.USER_ID).column_names == ["user_id"]
    assert "cat_path" not in users_schema["country"].properties  # no path to the fit-time scratch


def test_encoded_ids_are_contiguous_and_consistent(built):
    data, _, result = built
    interactions, users, items = _raw(data)
    for entity, table in (("user", users), ("item", items)):
        id_col = f"{entity}_id"
        id_map = pd.read_parquet(result.path / "id_maps" / f"{entity}s.parquet")
        assert list(id_map.columns) == [f"{id_col}_raw", id_col]
        assert id_map[f"{id_col}_raw"].tolist() == table[id_col].tolist()
        # users/ (items/) rows are in the same order as the id map
        assert _read(result.path / f"{entity}s")[id_col].tolist() == id_map[id_col].tolist()
        seen = id_map[id_map[f"{id_col}_raw"].isin(interactions[id_col])]
        unseen = id_map[~id_map[f"{id_col}_raw"].isin(interactions[id_col])]
        assert sorted(seen[id_col]) == list(range(FIRST_KNOWN, FIRST_KNOWN + len(seen)))  # contiguous
        assert (unseen[id_col] == OOV).all()  # never interacted: out of vocabulary
        # frequency order: the most frequent id gets the first index
        top = interactions[id_col].value_counts().idxmax()
        assert id_map.set_index(f"{id_col}_raw").loc[top, id_col] == FIRST_KNOWN

    # every train/valid row = its raw interaction mapped through the id maps
    user_map = pd.read_parquet(result.path / "id_maps" / "users.parquet").set_index("user_id_raw")["user_id"]
    item_map = pd.read_parquet(result.path / "id_maps" / "items.parquet").set_index("item_id_raw")["item_id"]
    expected = pd.DataFrame(
        {
            "user_id": interactions["user_id"].map(user_map),
            "item_id": interactions["item_id"].map(item_map),
            "click": interactions["label"].astype("int32"),
            "timestamp": interactions["ts"],
        }
    )
    actual = pd.concat([_read(result.path / "train"), _read(result.path / "valid")])
    key = ["timestamp", "user_id", "item_id", "click"]
    pd.testing.assert_frame_equal(
        actual[key].sort_values(key).reset_index(drop=True),
        expected[key].sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )
    # features in train/ are the transformed users/ rows of the same user
    users_out = _read(result.path / "users").drop_duplicates("user_id").set_index("user_id")
    train = _read(result.path / "train")
    joined = train.join(users_out, on="user_id", rsuffix="_u")
    assert (joined["country"] == joined["country_u"]).all()
    np.testing.assert_allclose(joined["age"], joined["age_u"])


def test_continuous_features_use_interaction_weighted_statistics(built):
    data, _, result = built
    interactions, users, items = _raw(data)
    # statistics over every interaction (what the refitted model sees), missing values excluded
    ages = interactions.merge(users, on="user_id")["age"].dropna()
    mean, std = ages.mean(), ages.std(ddof=1)
    assert not np.isclose(mean, users["age"].mean())  # weighted by interactions, not one per user

    user_map = pd.read_parquet(result.path / "id_maps" / "users.parquet")
    users_out = _read(result.path / "users").assign(user_id_raw=user_map["user_id_raw"])
    row = users.dropna(subset=["age"]).iloc[1]
    got = users_out.loc[users_out["user_id_raw"] == row["user_id"], "age"].item()
    assert got == pytest.approx((row["age"] - mean) / std, rel=1e-5)
    missing = users[users["age"].isna()]["user_id"].iloc[0]
    assert users_out.loc[users_out["user_id_raw"] == missing, "age"].item() == 0.0  # the training mean

    prices = interactions.merge(items, on="item_id")["price"]
    item_map = pd.read_parquet(result.path / "id_maps" / "items.parquet")
    items_out = _read(result.path / "items").assign(item_id_raw=item_map["item_id_raw"])
    item = items.iloc[4]
    got = items_out.loc[items_out["item_id_raw"] == item["item_id"], "price"].item()
    assert got == pytest.approx((item["price"] - prices.mean()) / prices.std(ddof=1), rel=1e-5)


def test_split_by_time(built):
    data, _, result = built
    interactions, _, _ = _raw(data)
    newest = interactions["ts"].max()
    cutoff = newest - 7 * DAY
    split = result.manifest["split"]
    assert split["kind"] == "time" and split["cutoff"] == cutoff and "as configured" in split["reason"]
    train, valid = _read(result.path / "train"), _read(result.path / "valid")
    assert split["valid_end"] == split["last"] == pd.Timestamp(newest, unit="s").isoformat()
    assert split["valid_start"] == pd.Timestamp(valid["timestamp"].min(), unit="s").isoformat()
    assert split["train_end"] == pd.Timestamp(train["timestamp"].max(), unit="s").isoformat()
    assert split["train_start"] == split["first"] == pd.Timestamp(interactions["ts"].min(), unit="s").isoformat()
    assert train["timestamp"].max() < cutoff <= valid["timestamp"].min()
    assert valid["timestamp"].max() == newest
    assert len(valid) == (interactions["ts"] >= cutoff).sum() > 0


def test_per_user_split_holds_out_a_share_of_each_users_interactions(tmp_path):
    data = write_data_version(tmp_path / "data" / "d1d1d1d1d1d1", data_version="d1d1d1d1d1d1")
    result = run_etl(data, tmp_path / "features", ValidationSplit("user", fraction=0.25), progress=lambda _m: None)
    assert result.manifest["split"]["kind"] == "user" and result.manifest["split"]["validation_fraction"] == 0.25
    interactions, _, _ = _raw(data)
    id_map = pd.read_parquet(result.path / "id_maps" / "users.parquet")
    user_map = id_map[id_map["user_id"] != OOV].set_index("user_id")["user_id_raw"]  # users without interactions share OOV
    valid = _read(result.path / "valid").assign(raw=lambda f: f["user_id"].map(user_map))
    train = _read(result.path / "train").assign(raw=lambda f: f["user_id"].map(user_map))
    assert len(valid) + len(train) == len(interactions)
    counts = interactions["user_id"].value_counts()
    assert set(valid["raw"]) <= set(counts[counts >= 5].index)  # too few interactions: all in training
    assert 0.15 < len(valid) / counts[counts >= 5].sum() < 0.35
    assert valid["timestamp"].min() < train["timestamp"].max()  # not a time split


def test_auto_split_falls_back_to_per_user_when_the_last_days_hold_too_little(tmp_path):
    # 600 interactions over 30 days, but a 1-day window: about 3% of them, below the 5% a window needs
    data = write_data_version(tmp_path / "data" / "d2d2d2d2d2d2", data_version="d2d2d2d2d2d2")
    result = run_etl(data, tmp_path / "features", ValidationSplit("auto", days=1), progress=lambda _m: None)
    split = result.manifest["split"]
    assert split["kind"] == "user" and "auto: per-user split, because the last 1 days hold" in split["reason"]
    week = run_etl(data, tmp_path / "features", ValidationSplit("auto", days=7), progress=lambda _m: None)
    assert week.manifest["split"]["kind"] == "time" and week.version != result.version


def test_saved_workflows_transform_raw_rows_like_the_etl(built):
    import nvtabular as nvt

    data, _, result = built
    users = pd.read_parquet(data / "users.parquet")
    workflow = nvt.Workflow.load(str(result.path / "workflows" / "user"))
    again = workflow.transform(Dataset(users, cpu=True)).to_ddf().compute().reset_index(drop=True)
    pd.testing.assert_frame_equal(again, _read(result.path / "users"))
    assert workflow.input_schema.column_names == ["user_id", "country", "is_premium", "age"]


def test_without_labels_every_interaction_is_a_click(tmp_path):
    data = write_data_version(tmp_path / "data", labels=False, n_interactions=200, data_version="nolabel00000")
    result = run_etl(data, tmp_path / "features", ValidationSplit("time", 5), progress=lambda _m: None)
    assert result.manifest["has_labels"] is False
    train = _read(result.path / "train")
    assert set(train["click"]) == {1} and str(train["click"].dtype) == "int32"


def test_rerun_returns_the_same_version_untouched(data_dir, tmp_path):
    root = tmp_path / "features"
    messages: list[str] = []
    first = run_etl(data_dir, root, ValidationSplit("time", 7), progress=messages.append)
    assert any("fit workflows" in m and "rows" in m and "s)" in m for m in messages)  # progress with counts
    stamps = {p: p.stat().st_mtime_ns for p in first.path.rglob("*")}
    messages.clear()
    second = run_etl(data_dir, root, ValidationSplit("time", 7), progress=messages.append)
    assert second.version == first.version and second.manifest == first.manifest
    assert first.created and not second.created  # the ETL says whether it wrote the version (jobs pass it on)
    assert {p: p.stat().st_mtime_ns for p in second.path.rglob("*")} == stamps
    assert len(messages) == 1 and "already exists" in messages[0]
    other = run_etl(data_dir, root, ValidationSplit("time", 3), progress=lambda _m: None)
    assert other.version != first.version  # the config is part of the version
    assert sorted(p.name for p in root.iterdir()) == sorted([first.version, other.version])


def test_missing_table_is_refused_and_nothing_is_written(data_dir, tmp_path):
    (data_dir / "items.parquet").unlink()
    root = tmp_path / "features"
    with pytest.raises(EtlError, match="items.parquet"):
        run_etl(data_dir, root, ValidationSplit("time", 7), progress=lambda _m: None)
    assert not root.exists() or list(root.iterdir()) == []


def test_failure_midway_leaves_no_folder(data_dir, tmp_path):
    # A column of dicts passes the dtype split (object -> categorical) but Categorify cannot
    # encode it: the fit fails after the temporary folder has received the first stages' output.
    users = pd.read_parquet(data_dir / "users.parquet")
    users["meta"] = [{"a": i} for i in range(len(users))]
    users.to_parquet(data_dir / "users.parquet", index=False)
    root = tmp_path / "features"
    root.mkdir()
    messages: list[str] = []
    with pytest.raises(EtlError, match=r"users\.parquet.*meta"):
        run_etl(data_dir, root, ValidationSplit("time", 7), progress=messages.append)
    assert "[etl] fit workflows on every interaction ..." in messages  # it did get midway
    assert list(root.iterdir()) == []


def test_unknown_ids_are_refused_with_an_example(data_dir, tmp_path):
    users = pd.read_parquet(data_dir / "users.parquet")
    interactions = pd.read_parquet(data_dir / "interactions.parquet")
    users[~users["user_id"].isin([interactions["user_id"].iloc[0]])].to_parquet(
        data_dir / "users.parquet", index=False
    )
    with pytest.raises(EtlError, match=rf"user_id.*e\.g\. {interactions['user_id'].iloc[0]}"):
        run_etl(data_dir, tmp_path / "features", ValidationSplit("time", 7), progress=lambda _m: None)
    assert not any((tmp_path / "features").iterdir())


def test_runs_on_a_version_written_by_the_data_package(tmp_path):
    """Contract check with the real ingest: a data version the data package writes is what the ETL reads."""
    from recsys.data.ingest import ingest
    from recsys.data.synthetic import SyntheticConfig, write_synthetic

    write_synthetic(tmp_path / "in", SyntheticConfig(n_users=150, n_items=40, n_interactions=2_000, days=14))
    version = ingest(tmp_path / "in", tmp_path / "data")
    result = run_etl(version.path, tmp_path / "features", ValidationSplit("time", 3), progress=lambda _m: None)
    assert result.manifest["data_version"] == version.version
    assert result.manifest["rows"]["train"] + result.manifest["rows"]["valid"] == len(
        pd.read_parquet(version.path / "interactions.parquet")
    )


def test_a_validation_window_covering_everything_is_refused(data_dir, tmp_path):
    with pytest.raises(EtlError, match="validation_days=40 covers every interaction"):
        run_etl(data_dir, tmp_path / "features", ValidationSplit("time", 40), progress=lambda _m: None)
    assert not any((tmp_path / "features").iterdir())


def test_empty_partitions_are_dropped_before_merlin_writes_them(tmp_path):
    """Regression: at 10M rows a time split left empty partitions and Merlin's writer divided by zero."""
    import dask.dataframe as dd
    import pandas as pd
    from merlin.io import Dataset

    from recsys.features.etl import _nonempty_partitions

    frame = dd.from_pandas(pd.DataFrame({"a": range(30), "t": range(30)}), npartitions=3)
    split = frame[frame["t"] >= 20]  # the first two partitions are now empty
    kept = _nonempty_partitions(split)
    assert kept.npartitions == 1 and kept.compute()["a"].tolist() == list(range(20, 30))
    Dataset(kept, cpu=True).to_parquet(tmp_path / "out")
    assert Dataset(tmp_path / "out", engine="parquet", cpu=True).num_rows == 10


def test_string_ids_are_categorified_and_the_id_maps_keep_them_raw(tmp_path):
    """Text ids (SKUs, UUIDs) from the real ingest: encoded like integer ids, raw in id_maps/."""
    from recsys.data.ingest import ingest
    from recsys.data.synthetic import SyntheticConfig, write_synthetic

    config = SyntheticConfig(n_users=150, n_items=40, n_interactions=2_000, days=14, string_ids=True)
    write_synthetic(tmp_path / "in", config)
    version = ingest(tmp_path / "in", tmp_path / "data")
    result = run_etl(version.path, tmp_path / "features", ValidationSplit("time", 3), progress=lambda _m: None)
    assert result.manifest["ids"] == {"user_id": "string", "item_id": "string"}

    interactions = pd.read_parquet(version.path / "interactions.parquet")
    interactions["ts"] = interactions["timestamp"].astype("int64") // 10**9
    maps = {}
    for entity in ("user", "item"):
        id_col = f"{entity}_id"
        table = pd.read_parquet(version.path / f"{entity}s.parquet")
        id_map = pd.read_parquet(result.path / "id_maps" / f"{entity}s.parquet")
        assert id_map[f"{id_col}_raw"].tolist() == table[id_col].tolist()  # raw, as text, in table order
        assert all(isinstance(v, str) for v in id_map[f"{id_col}_raw"])
        assert str(id_map[id_col].dtype) == "int64"
        seen = id_map[id_map[f"{id_col}_raw"].isin(interactions[id_col])]  # fitted on every interaction
        assert sorted(seen[id_col]) == list(range(FIRST_KNOWN, FIRST_KNOWN + len(seen)))
        assert (id_map.loc[~id_map[f"{id_col}_raw"].isin(interactions[id_col]), id_col] == OOV).all()
        maps[id_col] = id_map.set_index(f"{id_col}_raw")[id_col]
    actual = pd.concat([_read(result.path / "train"), _read(result.path / "valid")])
    expected = pd.DataFrame(
        {"user_id": interactions["user_id"].map(maps["user_id"]), "item_id": interactions["item_id"].map(maps["item_id"])}
    )
    key = ["user_id", "item_id"]
    pd.testing.assert_frame_equal(
        actual[key].sort_values(key).reset_index(drop=True), expected[key].sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )


def test_new_live_users_with_empty_features_go_through_the_etl(tmp_path):
    """A data version from the real ingest whose users table gained users first seen in live events:
    their int, bool and text (categorical) and float (continuous) features are empty; the ETL keeps
    every kind, encodes the empty categoricals as null (1) and the empty continuous as the mean (0),
    and ignores request_id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features_helpers import END
    from recsys.data.contract import LIVE_PART_COLUMNS, live_part_metadata, live_part_name
    from recsys.data.ingest import ingest

    landing = write_data_version(tmp_path / "in", n_users=30, n_interactions=400)
    (landing / "manifest.json").unlink()
    users = pd.read_parquet(landing / "users.parquet")
    users["tier"] = (np.arange(len(users)) % 4).astype(np.int64)  # an int categorical beside the bool and text ones
    users.to_parquet(landing / "users.parquet", index=False)
    new_users = [1, 2]  # not in users.parquet
    items = pd.read_parquet(landing / "items.parquet")["item_id"].to_numpy()
    live = pd.DataFrame(
        {
            "user_id": new_users * 4,
            "item_id": items[:8],
            "timestamp": END - pd.to_timedelta([20, 15, 12, 10, 3, 2, 1, 0], unit="D"),  # train and validation
            "event_type": ["click", "impression"] * 4,
            "request_id": ["r-1", None] * 4,
        }
    )[list(LIVE_PART_COLUMNS)]
    table = pa.Table.from_pandas(live, preserve_index=False)
    table = table.cast(table.schema.set(table.schema.get_field_index("timestamp"), pa.field("timestamp", pa.timestamp("ms"))))
    metadata = live_part_metadata("1711000000000-0", "1711800000000-0", 8)
    table = table.replace_schema_metadata({**table.schema.metadata, **metadata})
    before = ingest(landing, tmp_path / "data")  # the same landing before the live part: plain int/bool features
    (landing / "interactions").mkdir()
    pq.write_table(table, landing / "interactions" / live_part_name("1711000000000-0", 8))

    version = ingest(landing, tmp_path / "data", negative_event_types=["impression"])
    stored = pd.read_parquet(version.path / "users.parquet")
    assert {str(stored[c].dtype) for c in ("tier", "is_premium")} == {"Int64", "boolean"}
    assert stored.tail(2)[["country", "is_premium", "tier", "age"]].isna().all().all()
    assert "request_id" in pd.read_parquet(version.path / "interactions.parquet").columns

    result = run_etl(version.path, tmp_path / "features", ValidationSplit("time", 7), progress=lambda _m: None)
    columns = result.manifest["columns"]
    assert columns["user_categorical"] == ["country", "is_premium", "tier"] and columns["user_continuous"] == ["age"]
    id_map = pd.read_parquet(result.path / "id_maps" / "users.parquet")
    encoded = _read(result.path / "users")
    new_rows = encoded[id_map["user_id_raw"].isin(new_users).to_numpy()]
    assert len(new_rows) == 2 and (new_rows["user_id"] >= FIRST_KNOWN).all()  # an embedding of their own
    assert (new_rows[["country", "is_premium", "tier"]] == 1).all().all()  # 1: null
    assert (new_rows["age"] == 0.0).all()
    known = encoded[~id_map["user_id_raw"].isin(new_users).to_numpy()]
    assert (known[["country", "is_premium", "tier"]] >= FIRST_KNOWN).all().all()  # no other value became null
    train, valid = _read(result.path / "train"), _read(result.path / "valid")
    assert len(train) + len(valid) == version.manifest["rows"]["interactions"] == 408
    assert "request_id" not in train.columns
    assert set(new_rows["user_id"]) <= set(train["user_id"]) & set(valid["user_id"])

    # the gate re-scores newer data with an older version's workflows (recsys.training.rescoring):
    # one fitted before any user was new must take the empty int/bool features too
    import nvtabular as nvt

    older = run_etl(before.path, tmp_path / "features", ValidationSplit("time", 7), progress=lambda _m: None)
    assert pd.read_parquet(before.path / "users.parquet")["tier"].dtype == np.int64
    workflow = nvt.Workflow.load(str(older.workflow("user")))
    again = workflow.transform(Dataset(stored[workflow.input_schema.column_names], cpu=True)).to_ddf().compute()
    assert (again.tail(2)[["country", "is_premium", "tier"]] == 1).all().all()
    assert (again.iloc[:-2][["country", "is_premium", "tier"]] >= FIRST_KNOWN).all().all()
