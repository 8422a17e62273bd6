"""recsys_batch_recommendations: precompute every user's top N into Redis (offline mode).

Runs when a new model version serves (the ``recsys_serving`` Asset) **or** on a schedule
(``RECSYS_BATCH_SCHEDULE``, daily by default: picks up online-store refreshes), whichever comes
first. Each user is asked of the served ``recsys`` model on Triton (so the lists are what the online
path would answer), ``RECSYS_BATCH_CONCURRENCY`` requests in flight; the lists are written as a new
batch and switched in with one ``SET``, so readers (``recsys.serving.batch.read_precomputed``) never
see a half-written batch. Nothing to do when the current batch was made by the same model version
over the same online version (unless ``force``). Emits ``recsys_precomputed`` for a new batch.
Wiring only: the work is in ``recsys.serving.batch``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from recsys import jobs
from recsys.assets import PRECOMPUTED, SERVING
from recsys.settings import get_settings

settings = get_settings()


@dag(
    dag_id="recsys_batch_recommendations",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(settings.batch_schedule, timezone="UTC"),
        assets=[SERVING],
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["recsys", "serving"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "top_n": Param(settings.batch_top_n, type="integer", minimum=1, maximum=settings.recommend_max_k),
        "force": Param(False, type="boolean", description="recompute even if the current batch is up to date"),
    },
    doc_md=__doc__,
)
def recsys_batch_recommendations():
    @task(execution_timeout=timedelta(hours=6))
    @jobs.fails_fast
    def precompute(*, params=None, dag_run=None) -> dict:
        return jobs.precompute_recommendations(
            f"{dag_run.dag_id}/{dag_run.run_id}", force=bool(params.get("force")), top_n=params.get("top_n")
        )

    @task(outlets=[PRECOMPUTED])
    def announce_batch(batch: dict, *, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        if batch["skipped"]:
            raise AirflowSkipException(f"batch {batch['batch']} is up to date")
        outlet_events[PRECOMPUTED].extra = {"batch": batch["batch"], "model_version": batch["model_version"]}
        return batch

    announce_batch(precompute())


recsys_batch_recommendations()
