"""DagBag integrity: every DAG imports, is tagged, retries, and routes work to the right runtime.

``dagbag`` is the session's (tests/dags/conftest.py)."""

from recsys.settings import get_settings

EXPECTED_DAGS = {
    "recsys_etl",
    "recsys_train",
    "recsys_feature_refresh",
    "recsys_publish",
    "recsys_batch_recommendations",
    "recsys_drift",
}


def test_no_import_errors_and_every_dag_is_there(dagbag):
    assert dagbag.import_errors == {}
    assert EXPECTED_DAGS <= set(dagbag.dag_ids)


def test_every_dag_is_tagged_and_every_task_retries(dagbag):
    for dag_id in EXPECTED_DAGS:
        dag = dagbag.dags[dag_id]
        assert "recsys" in dag.tags, dag_id
        assert dag.doc_md, f"{dag_id} has no documentation for the Airflow UI"
        for t in dag.tasks:
            assert t.retries >= 1, f"{dag_id}.{t.task_id} has no retries"


def test_heavy_tasks_run_in_the_merlin_runtime_and_training_in_the_gpu_pool(dagbag):
    merlin = str(get_settings().merlin_python)
    etl = dagbag.dags["recsys_etl"].get_task("build_features")
    assert etl.python == merlin
    train = dagbag.dags["recsys_train"].get_task("train")
    assert train.python == merlin
    assert train.pool == get_settings().gpu_pool


def test_every_task_of_the_merlin_runtime_fails_fast_on_bad_input(dagbag):
    # Airflow retries any failure of a subprocess; only jobs.merlin_task's operator fails an InputError at once.
    from airflow.providers.standard.operators.python import ExternalPythonOperator

    from recsys import jobs

    external = [(dag_id, t.task_id, type(t)) for dag_id in EXPECTED_DAGS for t in dagbag.dags[dag_id].tasks
                if isinstance(t, ExternalPythonOperator)]
    assert len(external) == 3, external  # build_features, features, train
    assert all(kind is jobs._merlin_operator_class() for _, _, kind in external), external


def test_train_is_scheduled_on_the_features_asset_and_etl_emits_it(dagbag):
    from recsys.assets import CHAMPION, FEATURES

    etl = dagbag.dags["recsys_etl"]
    assert FEATURES in etl.get_task("announce_features").outlets
    train = dagbag.dags["recsys_train"]
    assert FEATURES.name in _asset_names(train.timetable.asset_condition)
    assert CHAMPION in train.get_task("announce_champion").outlets


def _asset_names(condition) -> set:
    """Names of the assets in a (possibly nested) schedule condition such as ``FEATURES | DRIFT``."""
    if hasattr(condition, "objects"):
        return set().union(*(_asset_names(o) for o in condition.objects))
    return {condition.name}


def test_drift_retrains_through_the_train_dag(dagbag):
    from recsys.assets import DRIFT

    assert DRIFT in dagbag.dags["recsys_drift"].get_task("announce_drift").outlets
    assert DRIFT.name in _asset_names(dagbag.dags["recsys_train"].timetable.asset_condition)
