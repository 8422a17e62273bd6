"""recsys_drift with ``dag.test()`` on tiny data, and the recsys_train run its DRIFT Asset event starts.

Real MLflow, real Evidently, real ETL and (one epoch of) real training in the Merlin runtime. The
module works in a home of its own with its own model names, so other DAG tests' versions and
champions are not mixed into its windows.
"""

import uuid

import pytest

from recsys.settings import get_settings
from shared_helpers import log_training, patched_environ

pytestmark = pytest.mark.slow

# strong tastes and enough rows that a short training beats popularity (the gate's floor)
TINY = dict(n_users=300, n_items=120, n_interactions=20_000, days=14, seed=3, temperature=0.3)


@pytest.fixture(scope="module")
def drift_env(stack_settings, airflow_db, tmp_path_factory):
    tag = uuid.uuid4().hex[:6]
    env = {
        "RECSYS_HOME": str(tmp_path_factory.mktemp("drift-dag-home")),
        "RECSYS_RETRIEVAL_MODEL_NAME": f"drift-retrieval-{tag}",
        "RECSYS_RANKING_MODEL_NAME": f"drift-ranking-{tag}",
        "RECSYS_EXPERIMENT_NAME": f"drift-dag-{tag}",
        "RECSYS_MONITORING_EXPERIMENT_NAME": f"drift-dag-monitoring-{tag}",
        "RECSYS_DRIFT_CONSECUTIVE_CHECKS": "1",
        "RECSYS_DRIFT_COOLDOWN_HOURS": "0",
        "RECSYS_EMBEDDING_DIM": "16",
        "RECSYS_BATCH_SIZE": "512",
        "RECSYS_LEARNING_RATE": "0.005",  # faster than the default (tuned on real data): tiny models, few epochs
        "RECSYS_EPOCHS": "15",  # early stopping ends sooner; enough to beat popularity
    }
    with patched_environ(env):
        yield get_settings()


def test_drift_dag_wiring(dagbag):
    from recsys.assets import DRIFT, FEATURES

    drift = dagbag.dags["recsys_drift"]
    assert "recsys" in drift.tags and drift.doc_md
    assert all(t.retries >= 1 for t in drift.tasks)
    assert DRIFT in drift.get_task("announce_drift").outlets
    train = dagbag.dags["recsys_train"]
    assert {FEATURES.name, DRIFT.name} <= {a.name for a in train.timetable.asset_condition.objects}
    assert train.get_task("features").python == str(get_settings().merlin_python)


def _fake_champion(s) -> str:
    """A champion on the current feature version without training (the drift check reads only its lineage)."""
    from recsys import jobs

    features = jobs.resolve_features()
    # any trained model beats it
    return log_training(s, {s.retrieval_primary_metric: 0.0, s.ranking_primary_metric: 0.0},
                        feature_version=features["feature_version"], data_version=features["data_version"])


def test_drift_triggers_a_retrain_on_the_judged_data(drift_env, dagbag, states):
    """The DRIFT Asset event of a drifted check starts recsys_train, which trains on the judged data.

    Without a running scheduler, the scheduler's own code turns the queued Asset event into the
    asset-triggered run (``_create_dagruns_for_dags``, ``_start_queued_dagruns``), and ``dag.test()``'s
    loop runs that very run's tasks (its ``triggering_asset_events`` come from the run in the metadata
    database, as under a scheduler): nothing names the check by hand.
    """
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from mlflow import MlflowClient

    from recsys.assets import DRIFT
    from recsys.data.synthetic import SyntheticConfig, write_synthetic
    from recsys.monitoring.store import get_check, list_checks

    s = drift_env
    write_synthetic(s.landing, SyntheticConfig(**TINY), overwrite=True)
    etl = dagbag.dags["recsys_etl"].test()
    assert etl.state == "success", states(etl)
    champion_run = _fake_champion(s)
    # the training DAG is scheduled on the DRIFT Asset; DAGs start paused, and a paused DAG gets no queued events
    assert DRIFT.name in {a.name for a in dagbag.dags["recsys_train"].timetable.asset_condition.objects}
    _set_paused("recsys_train", False)
    try:
        # the same data: no drift, announce_drift skipped: no Asset event, nothing queued for recsys_train
        calm = dagbag.dags["recsys_drift"].test()
        assert calm.state == "success", states(calm)
        assert states(calm)["announce_drift"] == "skipped"
        (first,) = list_checks(None, s)
        assert not first["trigger"] and first["champion_run_id"] == champion_run
        assert _drift_events(calm.run_id) == [] and _queued_for("recsys_train") == []

        # a drifted batch lands: drift, announce_drift emits the Asset event naming the check and its data
        write_synthetic(s.landing, SyntheticConfig(**{**TINY, "start": "2024-01-15", "drift": 1.0}), overwrite=True)
        drifted = dagbag.dags["recsys_drift"].test()
        assert drifted.state == "success", states(drifted)
        assert states(drifted)["announce_drift"] == "success"
        check = list_checks(1, s)[0]
        assert check["trigger"] and check["current_data_version"] != first["current_data_version"]
        judged = check["current_data_version"]
        assert get_check(check["check_id"], s)["drift"] is True
        assert judged not in {_data_version_of(p) for p in _feature_versions(s)}  # no features for it yet
        ((event_id, extra),) = _drift_events(drifted.run_id)
        assert extra == {"check_id": check["check_id"], "data_version": judged}
        assert _queued_for("recsys_train") == [DRIFT.name]

        # the scheduler's step creates the asset-triggered run that consumes that event
        run_id = _scheduler_creates_runs("recsys_train")
        run, consumed = _run_and_consumed_events("recsys_train", run_id)
        assert run.run_type == DagRunType.ASSET_TRIGGERED and run.triggered_by == DagRunTriggeredByType.ASSET
        assert not run.conf  # nothing given by hand
        assert event_id in consumed and _queued_for("recsys_train") == []

        # that run: ETL of the judged data version first, then training, tagged with the check
        train = _run_existing(dagbag.dags["recsys_train"], run_id)
        assert train.run_id == run_id and train.state == "success", states(train)
    finally:
        _set_paused("recsys_train", True)
        _clear_queue("recsys_train")
    assert judged in {_data_version_of(p) for p in _feature_versions(s)}  # the ETL ran for the judged data
    runs = MlflowClient(s.mlflow_uri).search_runs(
        [MlflowClient(s.mlflow_uri).get_experiment_by_name(s.experiment_name).experiment_id],
        filter_string=f"tags.`recsys.trigger` = 'drift:{check['check_id']}'",
    )
    assert len(runs) == 1 and runs[0].data.tags["recsys.data_version"] == judged
    assert runs[0].data.tags["recsys.airflow_run"] == f"recsys_train/{run_id}"
    # it beat the untrained champion through the same gate, so it is published like any champion
    assert states(train)["announce_champion"] == "success"


# --- the metadata database, as the scheduler sees it -----------------------------------------------
def _set_paused(dag_id: str, paused: bool) -> None:
    from sqlalchemy import update

    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        assert session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=paused)).rowcount == 1


def _drift_events(source_run_id: str) -> list[tuple[int, dict]]:
    """(id, extra) of the DRIFT Asset events the run ``source_run_id`` of recsys_drift emitted."""
    from sqlalchemy import select

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from recsys.assets import DRIFT

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.id, AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id).where(
                AssetModel.name == DRIFT.name, AssetModel.uri == DRIFT.uri,
                AssetEvent.source_dag_id == "recsys_drift", AssetEvent.source_run_id == source_run_id,
            )
        ).all()
    return [(event_id, dict(extra or {})) for event_id, extra in rows]


def _queued_for(dag_id: str) -> list[str]:
    """Names of the Assets with an event queued for ``dag_id`` (what makes the scheduler create its run)."""
    from sqlalchemy import select

    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return sorted(session.scalars(
            select(AssetModel.name).join(AssetDagRunQueue, AssetDagRunQueue.asset_id == AssetModel.id)
            .where(AssetDagRunQueue.target_dag_id == dag_id)
        ))


def _clear_queue(dag_id: str) -> None:
    from sqlalchemy import delete

    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as session:
        session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id))


def _scheduler_creates_runs(dag_id: str) -> str:
    """The scheduler loop's run creation and start (its executor is never started: the tasks are run
    below), until ``dag_id``'s new run runs; returns its id. A new run starts on a later pass than the
    one creating it (its ``run_after`` must be before the database's clock, in whole seconds on SQLite)."""
    import time

    from sqlalchemy import select

    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.sqlalchemy import prohibit_commit

    runner = SchedulerJobRunner(job=Job())
    with create_session() as session:
        before = set(session.scalars(select(DagRun.run_id).where(DagRun.dag_id == dag_id)))
    deadline = time.monotonic() + 30
    while True:
        with create_session() as session:
            with prohibit_commit(session) as guard:
                runner._create_dagruns_for_dags(guard, session)
                runner._start_queued_dagruns(session)
                guard.commit()
            new = session.execute(
                select(DagRun.run_id, DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id.not_in(before))
            ).all()
        assert len(new) <= 1, new  # one event, one run
        if new and new[0].state == "running":
            return new[0].run_id
        assert time.monotonic() < deadline, f"no running {dag_id} run: {new}"
        time.sleep(0.5)


def _run_and_consumed_events(dag_id: str, run_id: str):
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        consumed = {event.id for event in run.consumed_asset_events}
        session.expunge(run)
    return run, consumed


def _run_existing(dag, run_id: str):
    """``dag.test()``'s loop over the existing run ``run_id`` (instead of the manual run it would create)."""
    from unittest.mock import patch

    from sqlalchemy import select

    from airflow.models.dagrun import DagRun

    def existing_run(*, dag, session, **_ignored):
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id))
        assert run.state == "running", run.state  # the scheduler started it
        run.dag = dag
        return run

    with patch("airflow.models.dagrun.get_or_create_dagrun", existing_run):
        return dag.test()


def _feature_versions(s) -> list:
    return [p for p in s.features_root.iterdir() if (p / "manifest.json").exists()]


def _data_version_of(feature_dir) -> str:
    import json

    return json.loads((feature_dir / "manifest.json").read_text())["data_version"]
