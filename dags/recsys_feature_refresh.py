"""recsys_feature_refresh: write the newest feature version to the Redis online store.

Runs when a new feature version exists (the ``recsys_features`` Asset, emitted by ``recsys_etl``)
**or** on a schedule (``RECSYS_ONLINE_REFRESH_SCHEDULE``, hourly by default), whichever comes first.

The schedule is a safety net: it catches a feature version made outside Airflow (``recsys etl``), a
Redis that lost its data, and collects retired online versions once their grace period is over.
Choosing it trades freshness against write load: every real refresh writes all changed rows into
the same Redis the serving path reads, paced so that readers' p99 stays within
``RECSYS_ONLINE_REFRESH_READ_BUDGET`` times its idle value (measured in ``bench/online_store.py``;
the task log shows the rate the refresh reached and how long it paused), so a very frequent schedule
buys little. Refreshing the version that is
already current is a no-op (unless the run's ``force`` parameter is set), so frequent runs cost one
Redis read.

Each refresh writes a complete new online version and switches to it atomically; a failed try
leaves the serving version untouched and removes its partial keys, so retries are safe. Switching
``current`` to a new feature version does not change what the served models read: they read the
feature version they were trained on (pinned by ``recsys_publish``, kept by garbage collection).
``incremental`` (default on) writes only the entities that changed since the current version and
falls back to a full write when the column layout changed. Wiring only: the work is in
``recsys.online.refresh``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from recsys import jobs
from recsys.assets import FEATURES
from recsys.settings import get_settings

settings = get_settings()


@dag(
    dag_id="recsys_feature_refresh",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(settings.online_refresh_schedule, timezone="UTC"),
        assets=[FEATURES],
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two refreshes at once would race for the `current` pointer
    tags=["recsys", "online"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "features_dir": Param(None, type=["null", "string"], description="feature version folder; default: the newest"),
        "incremental": Param(True, type="boolean", description="write only entities that changed"),
        "force": Param(False, type="boolean", description="write even if that feature version is current"),
    },
    doc_md=__doc__,
)
def recsys_feature_refresh():
    @task(execution_timeout=timedelta(hours=1))
    @jobs.fails_fast
    def refresh(*, params=None) -> dict:
        import logging

        from recsys.online.refresh import refresh_online_store

        result = refresh_online_store(
            params.get("features_dir"),
            incremental=bool(params.get("incremental")),
            force=bool(params.get("force")),
            collect=False,
        )
        logging.getLogger("recsys_feature_refresh").info(
            "online version %s (%s%s): %s rows written, %s copied, in %.2fs (%s rows/s); pacing: %s",
            result["version"], result["mode"], ", skipped: already current" if result["skipped"] else "",
            result["rows_written"], result["users_copied"] + result["items_copied"], result["seconds"],
            result["rows_per_second"], result["pacing"],
        )
        return result

    @task
    @jobs.fails_fast
    def collect_garbage(refreshed: dict) -> dict:
        from recsys.online.refresh import collect_garbage as collect

        return collect()

    collect_garbage(refresh())


recsys_feature_refresh()
