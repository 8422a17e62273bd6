"""recsys_feature_refresh runs with ``dag.test()`` against the session's real Redis.

The feature versions are written directly in the layout the online store reads
(``tests/online_sample.py``); the contract with the real ETL's output is tested in tests/online.
"""

import uuid

import numpy as np
import pandas as pd
import pytest

from recsys.settings import get_settings


@pytest.fixture
def refresh_home(stack_settings, airflow_db, tmp_path, monkeypatch):
    """A fresh home (own feature versions) and key prefix; Redis is the session's."""
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECSYS_ONLINE_KEY_PREFIX", f"dagtest-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def refresh_dag(dagbag):
    return dagbag.dags["recsys_feature_refresh"]


def test_scheduled_on_time_or_the_features_asset(refresh_dag):
    from recsys.assets import FEATURES

    dag = refresh_dag
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    assert FEATURES.name in {a.name for a in dag.timetable.asset_condition.objects}
    assert dag.timetable.timetable.expression == "0 * * * *"  # the default setting, "@hourly"
    assert all(t.retries >= 1 for t in dag.tasks) and dag.doc_md


def test_refresh_dag_writes_the_newest_version_and_is_idempotent(refresh_home, refresh_dag, states):
    from recsys.online.redis_store import RedisOnlineStore
    from online_sample import write_sample_versions

    s = refresh_home
    first_dir = write_sample_versions(s.home, n_users=120, n_items=40, n_interactions=800, seed=1)
    store = RedisOnlineStore.from_settings(s)

    run = refresh_dag.test()
    assert run.state == "success", states(run)
    first = store.current()
    assert first.feature_version == first_dir.name and first.users == 120 and first.items == 40
    users = pd.read_parquet(first_dir / "users" / "part_0.parquet")
    rows = store.read(1007, [5000, 5039])
    assert rows.user_found and rows.item_found.all()
    assert rows.user["region"][0] == users["region"][7]
    assert np.isclose(rows.user["activity"][0], users["activity"][7])

    # the same newest version again: a no-op (the current version is unchanged)
    again = refresh_dag.test()
    assert again.state == "success", states(again)
    assert store.current().version == first.version

    # a newer feature version: written incrementally, the old one retired (kept for the grace period)
    second_dir = write_sample_versions(s.home, n_users=120, n_items=40, n_interactions=900, seed=1)
    third = refresh_dag.test()
    assert third.state == "success", states(third)
    second = store.current()
    assert second.feature_version == second_dir.name and second.version != first.version
    assert second.mode == "incremental"
    assert first.version in store.status()["retired"]
    store.client.close()
