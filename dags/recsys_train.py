"""recsys_train: train the two-tower and DLRM models, log them to MLflow, apply the champion gate.

Runs when a new feature version exists (the ``recsys_features`` Asset) or by hand, with parameters
(e.g. ``{"epochs": 5}``). Training runs in the Merlin runtime, in the ``gpu`` pool, so production can
route it to GPU workers. Wiring only: the work is in ``recsys.jobs``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from recsys.assets import CHAMPION, FEATURES
from recsys.settings import get_settings

settings = get_settings()


@dag(
    dag_id="recsys_train",
    schedule=[FEATURES],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["recsys", "training"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "epochs": Param(settings.epochs, type="integer", minimum=1, maximum=100),
        "feature_version": Param(None, type=["null", "string"], description="default: the newest"),
    },
    doc_md=__doc__,
)
def recsys_train():
    @task
    def plan(*, params=None, dag_run=None) -> dict:
        from recsys import jobs

        features = jobs.resolve_features(params.get("feature_version"))
        return {
            "features": features,
            "params": jobs.training_params({"epochs": params.get("epochs")}),
            "airflow_run": f"{dag_run.dag_id}/{dag_run.run_id}",
        }

    @task.external_python(
        python=str(settings.merlin_python),
        pool=settings.gpu_pool,
        execution_timeout=timedelta(hours=6),
    )
    def train(plan: dict) -> dict:
        from recsys import jobs

        return jobs.train_and_log(plan["features"]["path"], plan["params"], plan["airflow_run"])

    @task
    def champion_gate(trained: dict) -> dict:
        from recsys import jobs

        return jobs.champion_gate(trained["run_id"])

    @task(outlets=[CHAMPION])
    def announce_champion(gate: dict, *, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        if not gate["new_champion"]:
            # Skipped: no Asset event, so nothing downstream republishes an unchanged champion.
            raise AirflowSkipException("no model beat its champion; nothing new to publish")
        outlet_events[CHAMPION].extra = {"run_id": gate["run_id"]}
        return gate

    announce_champion(champion_gate(train(plan())))


recsys_train()
