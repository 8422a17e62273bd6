"""`recsys online` commands, and a refresh from the real NVTabular ETL's output (the layout contract)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest

from recsys.settings import PROJECT_ROOT, get_settings


@pytest.fixture
def online_env(stack_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECSYS_ONLINE_KEY_PREFIX", f"clitest-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_cli_refresh_status_and_unavailable(online_env, capsys):
    from recsys.cli import main
    from recsys.online.redis_store import RedisOnlineStore
    from online_sample import write_sample_versions

    features = write_sample_versions(online_env.home, n_users=50, n_items=20, n_interactions=300)
    assert main(["online", "refresh"]) == 0
    assert f'"feature_version": "{features.name}"' in capsys.readouterr().out
    assert main(["online", "refresh"]) == 0
    assert '"skipped": true' in capsys.readouterr().out

    assert main(["online", "status"]) == 0
    assert f'"feature_version": "{features.name}"' in capsys.readouterr().out

    assert main(["online", "unavailable", "add", "5001", "5002"]) == 0
    assert "2 item(s) marked unavailable" in capsys.readouterr().out
    store = RedisOnlineStore.from_settings(online_env)
    assert store.read(None, [5001, 5003]).unavailable.tolist() == [True, False]
    assert main(["online", "unavailable", "remove", "5002"]) == 0
    assert main(["online", "unavailable", "list"]) == 0
    assert capsys.readouterr().out.split()[-1] == "5001"
    assert main(["online", "unavailable", "add"]) == 2  # a clear error, no traceback
    assert "at least one raw item id" in capsys.readouterr().err
    assert main(["online", "unavailable", "add", "SKU-1"]) == 2  # not an id of this deployment's kind
    assert "item_id 'SKU-1' is not an integer id; this deployment's item ids are integers" in capsys.readouterr().err
    store.client.close()


def test_cli_unavailable_with_text_ids(online_env, capsys):
    from recsys.cli import main
    from recsys.online.redis_store import RedisOnlineStore
    from online_sample import write_sample_versions

    write_sample_versions(online_env.home, n_users=30, n_items=12, n_interactions=200, string_ids=True)
    assert main(["online", "refresh"]) == 0
    capsys.readouterr()
    assert main(["online", "unavailable", "add", "SKU-5001", "SKU-5003"]) == 0
    assert "2 item(s) marked unavailable" in capsys.readouterr().out
    store = RedisOnlineStore.from_settings(online_env)
    assert store.read(None, ["SKU-5001", "SKU-5002"]).unavailable.tolist() == [True, False]
    assert main(["online", "unavailable", "list"]) == 0
    assert capsys.readouterr().out.split() == ["SKU-5001", "SKU-5003"]
    assert main(["online", "status"]) == 0
    assert '"item_id": "string"' in capsys.readouterr().out
    store.client.close()


def test_missing_data_version_is_a_clear_error(online_env, capsys):
    import shutil

    from recsys.cli import main
    from recsys.data.versioning import read_manifest
    from online_sample import write_sample_versions

    features = write_sample_versions(online_env.home, n_users=10, n_items=5, n_interactions=30)
    shutil.rmtree(online_env.data_root / read_manifest(features)["data_version"])
    assert main(["online", "refresh", "--features", str(features)]) == 2
    assert "is not at" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("string_ids", [False, True], ids=["int_ids", "string_ids"])
def test_refresh_from_the_real_etl_output(online_env, string_ids):
    """Generate tiny data, run the real ETL in the Merlin runtime, refresh, read back."""
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.online.refresh import refresh_online_store

    s = online_env
    run = [sys.executable, "-m", "recsys.cli"]
    subprocess.run(run + ["data", "generate", "--out", str(s.home / "land"), "--users", "120", "--items", "40",
                          "--interactions", "1500", "--days", "14", *(["--string-ids"] if string_ids else [])],
                   check=True, capture_output=True)
    subprocess.run(run + ["data", "ingest", str(s.home / "land")], check=True, capture_output=True)
    data_dir = next(p for p in s.data_root.iterdir() if not p.name.startswith("."))
    etl = subprocess.run(run + ["etl", "--data", str(data_dir)], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert etl.returncode == 0, etl.stderr[-2000:]

    result = refresh_online_store()
    assert not result["skipped"] and result["rows"] == 160
    features = next(p for p in s.features_root.iterdir() if not p.name.startswith("."))
    users = pd.read_parquet(next((features / "users").glob("*.parquet")))
    items = pd.read_parquet(next((features / "items").glob("*.parquet")))
    user_map = pd.read_parquet(features / "id_maps" / "users.parquet")
    item_map = pd.read_parquet(features / "id_maps" / "items.parquet")
    store = RedisOnlineStore.from_settings(s)
    kind = "string" if string_ids else "int"
    assert store.current().ids == {"user_id": kind, "item_id": kind}
    rows = store.read(user_map.user_id_raw[5], item_map.item_id_raw.tolist(), with_seen=True)
    assert list(rows.user) == list(users.columns) and list(rows.items) == list(items.columns)
    for column in users.columns:
        assert rows.user[column][0] == pytest.approx(users[column][5]), column
    for column in items.columns:
        np.testing.assert_allclose(rows.items[column], items[column].to_numpy(), rtol=1e-6, err_msg=column)
    interactions = pd.read_parquet(data_dir / "interactions.parquet")
    # every item the user interacted with, newest first (the query tower's history reads the first N)
    mine = interactions[interactions.user_id == user_map.user_id_raw[5]]
    latest = mine.groupby("item_id")["timestamp"].max().reset_index()
    expected_seen = latest.sort_values(["timestamp", "item_id"], ascending=[False, True])["item_id"].to_numpy()
    np.testing.assert_array_equal(rows.seen, expected_seen)
    assert rows.seen.dtype == (object if string_ids else np.int64)
    raw_items = pd.read_parquet(data_dir / "items.parquet")
    assert store.display([raw_items.item_id[0]])[0]["brand"] == raw_items.brand[0]
    store.client.close()
