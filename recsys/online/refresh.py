"""Refresh the online store from a feature version: the unit of work of the DAG and the CLI.

JSON-able results (they travel through Airflow's XCom); idempotent (refreshing the feature version
that is already current is a no-op unless forced).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from recsys.errors import RecsysError
from recsys.settings import Settings, get_settings

log = logging.getLogger(__name__)


def newest_feature_version(settings: Optional[Settings] = None) -> Path:
    """Folder of the newest complete feature version (a clear error when there is none)."""
    from recsys.data.versioning import latest_version

    s = settings or get_settings()
    version = latest_version(s.features_root)
    if version is None:
        raise RecsysError(f"no feature version under {s.features_root}: run the recsys_etl DAG (or `recsys etl`) first")
    return version.path


def refresh_online_store(
    features_dir: Optional[str] = None,
    data_dir: Optional[str] = None,
    *,
    incremental: bool = False,
    force: bool = False,
    collect: bool = True,
    settings: Optional[Settings] = None,
) -> dict:
    """Write a feature version (default: the newest) to Redis as the current online version, paced
    against readers' latency (``settings.online_refresh_read_budget``, :mod:`recsys.online.pacing`).

    Then (``collect``) deletes versions retired longer than the grace period. Returns what was done: version,
    mode, rows written/copied/deleted, seconds, rows per second, how the refresh paced itself (``pacing``:
    the limit, probe latencies, seconds paused, the unit and duty it reached), and the versions removed.
    """
    from recsys import layout
    from recsys.data.versioning import read_manifest
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.online.snapshot import build_snapshot

    s = settings or get_settings()
    folder = Path(features_dir) if features_dir else newest_feature_version(s)
    started = time.perf_counter()
    if data_dir is None:  # the data version the feature version was built from, where the settings keep data
        data_dir = layout.data_dir(s, str(read_manifest(folder)["data_version"]))
    snapshot = build_snapshot(folder, Path(data_dir), popularity_size=s.online_popularity_size)
    read_seconds = time.perf_counter() - started
    store = RedisOnlineStore.from_settings(s)
    try:
        result = store.refresh(snapshot, incremental=incremental, force=force, read_budget=s.online_refresh_read_budget)
        if collect:
            result.removed_versions = store.collect_garbage()
    finally:
        store.client.close()
    out = result.to_dict()
    out["read_seconds"] = round(read_seconds, 3)
    out["features_dir"] = str(folder)
    log.info(
        "online refresh %s: version %s (%s) from %s, %d rows written, %d copied, in %.2fs (%s rows/s; paused %ss), "
        "removed %s",
        "skipped" if result.skipped else "done", result.version, result.mode, folder, result.rows_written,
        result.users_copied + result.items_copied, result.seconds, result.rows_per_second,
        result.pacing.get("paused_seconds", 0), result.removed_versions,
    )
    return out


def collect_garbage(settings: Optional[Settings] = None) -> dict:
    """Delete online versions retired longer than the grace period; returns the removed ones."""
    from recsys.online.redis_store import RedisOnlineStore

    store = RedisOnlineStore.from_settings(settings or get_settings())
    try:
        removed = store.collect_garbage()
        current = store.current()
    finally:
        store.client.close()
    return {"removed_versions": removed, "current": current.version if current else None}
