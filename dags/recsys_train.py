"""recsys_train: train the two-tower and DLRM models, log them to MLflow, apply the champion gate.

Runs when a new feature version exists (the ``recsys_features`` Asset), when a drift check decided to
retrain (the ``recsys_drift`` Asset), or by hand, with parameters (e.g. ``{"epochs": 5}``, or
``{"drift_check": "<check_id>"}`` to retrain for a recorded drift check). A drift-triggered run trains on
the data version the check judged: ``features`` runs the ETL for it first (a no-op when its feature
version exists), and the MLflow run is tagged ``recsys.trigger = drift:<check_id>``. Training runs in
the Merlin runtime, in the ``gpu`` pool, so production can route it to GPU workers. Wiring only: the
work is in ``recsys.jobs``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from recsys import jobs
from recsys.assets import CHAMPION, DRIFT, FEATURES
from recsys.settings import get_settings

settings = get_settings()


@dag(
    dag_id="recsys_train",
    schedule=(FEATURES | DRIFT),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["recsys", "training"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "epochs": Param(settings.epochs, type="integer", minimum=1, maximum=1000,
                        description="at most this many epochs per model (early stopping usually ends sooner)"),
        "tune": Param(settings.tune_trials, type="integer", minimum=0, maximum=1000,
                      description="Optuna trials before training (0: none); each trial is an MLflow child run"),
        "tune_timeout_minutes": Param(settings.tune_timeout_seconds / 60, type="number", minimum=1,
                                      description="the search stops after this long"),
        "feature_version": Param(None, type=["null", "string"], description="default: the newest"),
        "drift_check": Param(None, type=["null", "string"], description="retrain for this drift check's data"),
    },
    doc_md=__doc__,
)
def recsys_train():
    @task
    @jobs.fails_fast
    def plan(*, params=None, dag_run=None, triggering_asset_events=None) -> dict:
        events = triggering_asset_events or {}
        return jobs.training_plan(
            f"{dag_run.dag_id}/{dag_run.run_id}",
            feature_version=params.get("feature_version"),
            epochs=params.get("epochs"),
            tune_trials=params.get("tune"),
            tune_timeout_seconds=60 * float(params["tune_timeout_minutes"]) if params.get("tune_timeout_minutes") else None,
            drift_check=params.get("drift_check"),
            drift_events=[dict(e.extra or {}) for e in events.get(DRIFT, [])],
            feature_events=[dict(e.extra or {}) for e in events.get(FEATURES, [])],
        )

    @jobs.merlin_task(execution_timeout=timedelta(hours=2))
    def features(plan: dict) -> dict:
        from recsys import jobs

        return jobs.training_features(plan)

    @jobs.merlin_task(pool=settings.gpu_pool, execution_timeout=timedelta(hours=6))
    def train(plan: dict, features: dict) -> dict:
        from recsys import jobs

        return jobs.train_and_log(features["path"], plan["params"], plan["airflow_run"], extra_tags=plan["tags"])

    @task
    @jobs.fails_fast
    def champion_gate(trained: dict) -> dict:
        return jobs.champion_gate(trained["run_id"])

    @task(outlets=[CHAMPION])
    def announce_champion(gate: dict, *, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        if gate.get("popularity_serving"):
            # No model beats popularity yet: publishing serves the popularity list of the newest data.
            outlet_events[CHAMPION].extra = {"run_id": gate["run_id"], "popularity": True}
            return gate
        if not gate["new_champion"]:
            # Skipped: no Asset event, so nothing downstream republishes an unchanged champion.
            raise AirflowSkipException("no model beat its champion; nothing new to publish")
        outlet_events[CHAMPION].extra = {"run_id": gate["run_id"]}
        return gate

    planned = plan()
    announce_champion(champion_gate(train(planned, features(planned))))


recsys_train()
