"""recsys_drift: is the newest data still like the champion's training data? Retrain when it is not.

Runs on a schedule (``RECSYS_DRIFT_SCHEDULE``, hourly by default). ``check`` snapshots the landing
folder as a data version (a no-op when unchanged), then compares the raw user and item features of the
champion's training window with the last ``RECSYS_DRIFT_WINDOW_DAYS`` days of the newest data, per
feature, with Evidently (methods and thresholds: ``RECSYS_DRIFT_METHODS`` / ``RECSYS_DRIFT_THRESHOLDS``).
Drift is decided when at least ``RECSYS_DRIFT_SHARE`` of the features drifted; a retrain is triggered
only after drift in ``RECSYS_DRIFT_CONSECUTIVE_CHECKS`` checks in a row and at most once per
``RECSYS_DRIFT_COOLDOWN_HOURS``. Each check is kept (HTML report + summary under
``<home>/monitoring/checks/``, a line in ``history.jsonl``) and logged to MLflow (experiment
``recsys-monitoring``, tagged with the champion it judged).

``announce_drift`` emits the ``recsys_drift`` Asset (which starts ``recsys_train`` on the judged data
version) only when the check triggers; otherwise it is skipped, with the reason. Bad current data fails
``check`` with a clear error and triggers nothing. Wiring only: the work is in ``recsys.monitoring``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import CronTriggerTimetable, dag, task

from recsys import jobs
from recsys.assets import DRIFT
from recsys.settings import get_settings

settings = get_settings()


@dag(
    dag_id="recsys_drift",
    schedule=CronTriggerTimetable(settings.drift_schedule, timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # checks are counted in order (hysteresis)
    tags=["recsys", "monitoring"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
)
def recsys_drift():
    @task(execution_timeout=timedelta(minutes=30))
    @jobs.fails_fast
    def check(*, dag_run=None) -> dict:
        return jobs.drift_check(f"{dag_run.dag_id}/{dag_run.run_id}")

    @task(outlets=[DRIFT])
    def announce_drift(result: dict, *, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        if not result["trigger"]:
            # Skipped: no Asset event, so nothing retrains.
            raise AirflowSkipException(result.get("skipped") or f"check {result['check_id']}: {result['reason']}")
        outlet_events[DRIFT].extra = {"check_id": result["check_id"], "data_version": result["current_data_version"]}
        return result

    announce_drift(check())


recsys_drift()
