"""recsys_etl: validate the landing folder, snapshot it as a data version, run the NVTabular ETL.

Wiring only: the work is in ``recsys.jobs``. The ETL runs in the Merlin runtime's interpreter.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from recsys import jobs
from recsys.assets import FEATURES


@dag(
    dag_id="recsys_etl",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["recsys", "etl"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
)
def recsys_etl():
    @task
    @jobs.fails_fast
    def ingest() -> dict:
        return jobs.ingest_landing()

    @jobs.merlin_task(execution_timeout=timedelta(hours=2))
    def build_features(data_version: dict) -> dict:
        from recsys import jobs  # the Merlin runtime runs this body alone, without the module's imports

        return jobs.build_features(data_version["path"])

    @task(outlets=[FEATURES])
    def announce_features(features: dict, *, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        if not features["created"]:
            # Skipped: no Asset event, so an unchanged feature version does not retrain anything.
            raise AirflowSkipException(f"feature version {features['feature_version']} already existed")
        outlet_events[FEATURES].extra = {
            "feature_version": features["feature_version"],
            "data_version": features["data_version"],
        }
        return features

    announce_features(build_features(ingest()))


recsys_etl()
