"""recsys_publish: serve the MLflow champions on Triton as a new model version.

Runs when ``recsys_train`` sets a new champion (the ``recsys_champion`` Asset) or by hand (``force``
publishes even when these champions already serve). First makes sure the online store holds the
feature version the champions were trained on (refreshing it if needed: the models read their
features from Redis by that version's encoded ids, pinned to it), then publishes: download and
verify the artifacts, write version N+1 of every model, pin its feature version in the online
store, load it, smoke-test it, release the previous feature version's pin; on failure the previous
version (and its pin) keeps serving and the run fails. A new version that serves emits ``recsys_serving``.
The publish task publishes exactly the champions the plan resolved and fails, saying so, if the
``champion`` alias moved in between (the next run publishes the new one). Publishing the champions
that already serve is a no-op, so retries are safe. Wiring only: the work
is in ``recsys.jobs`` / ``recsys.serving.publish``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from recsys import jobs
from recsys.assets import CHAMPION, SERVING


@dag(
    dag_id="recsys_publish",
    schedule=[CHAMPION],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one publish at a time (publish also holds a file lock on the repository)
    tags=["recsys", "serving"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    params={"force": Param(False, type="boolean", description="publish even if these champions already serve")},
    doc_md=__doc__,
)
def recsys_publish():
    @task
    @jobs.fails_fast
    def plan() -> dict:
        return jobs.publish_plan()

    @task(execution_timeout=timedelta(hours=1))
    @jobs.fails_fast
    def online_store(plan: dict) -> dict:
        return jobs.ensure_online_features(plan["feature_version"], plan["data_version"])

    @task(execution_timeout=timedelta(minutes=30))
    @jobs.fails_fast
    def publish(plan: dict, online: dict, *, params=None, dag_run=None) -> dict:
        # Exactly what the plan resolved (Redis was prepared for it); refused if the champion moved since.
        return jobs.publish_champions(f"{dag_run.dag_id}/{dag_run.run_id}", force=bool(params.get("force")), plan=plan)

    @task(outlets=[SERVING])
    def announce_serving(published: dict, *, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        if not published["published"]:
            # Skipped: no Asset event, so offline lists are not recomputed for an unchanged model.
            raise AirflowSkipException(f"Triton version {published['version']} already serves these champions")
        outlet_events[SERVING].extra = {"version": published["version"], "champions": published["champions"]}
        return published

    planned = plan()
    announce_serving(publish(planned, online_store(planned)))


recsys_publish()
