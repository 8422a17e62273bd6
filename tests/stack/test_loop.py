"""The loop as users run it: the running stack's scheduler drives the DAGs through their Assets.

One stack of the test's own (``recsys stack up``: Redis, MLflow, Airflow with LocalExecutor, Triton, the
API), tiny data and tiny models. Nothing calls ``dag.test()``: data lands, the daily ``recsys_etl`` run
the scheduler starts on unpausing ingests it, its ``recsys_features`` event starts ``recsys_train`` and
``recsys_feature_refresh``, the ``recsys_champion`` event starts ``recsys_publish``, and Triton answers.
The same data again makes no Asset event, so nothing retrains or republishes. A restart of the whole
stack keeps serving the same version, after a publish and after a rollback.
"""

from __future__ import annotations

import os
import time

import pytest

from loop_helpers import answer, land_and_unpause, new_run, published_by_champion, run_done, scheduler_beats_after, served_versions, started_by, training_runs
from shared_helpers import patched_environ, triton_ports_env

pytestmark = pytest.mark.slow

ETL, TRAIN, REFRESH, PUBLISH = "recsys_etl", "recsys_train", "recsys_feature_refresh", "recsys_publish"


@pytest.fixture()
def loop_settings(tmp_path):
    """A home and ports of its own (the whole stack is restarted), tiny models, no time-triggered runs
    that could interleave; the stack is stopped after the test whatever happened."""
    from recsys import stack
    from recsys.settings import load_settings
    from recsys.stack.service import free_port

    # The session stack's (or a developer's) services, secrets and settings must not leak in; the Merlin
    # interpreter is the one thing kept from the environment.
    leaking = [k for k in os.environ if k.startswith(("RECSYS_", "MLFLOW_")) and k != "RECSYS_MERLIN_PYTHON"]
    env = {
        **dict.fromkeys(leaking),  # unset
        "MLFLOW_TRACKING_USERNAME": None, "MLFLOW_TRACKING_PASSWORD": None,  # set by authenticate(): put back after
        "RECSYS_HOME": str(tmp_path / "home"),
        "RECSYS_HOST": "127.0.0.1",
        **{f"RECSYS_{name}_PORT": str(free_port()) for name in ("REDIS", "MLFLOW", "AIRFLOW", "API", "EVENTS_METRICS")},
        **triton_ports_env(),
        # small and quick models (tests/dags/test_pipeline_dags.py); no refit: one training per model
        "RECSYS_EPOCHS": "1", "RECSYS_EMBEDDING_DIM": "16", "RECSYS_BATCH_SIZE": "512", "RECSYS_LEARNING_RATE": "0.005",
        "RECSYS_REFIT": "false",
        # once a year: no hourly refresh run in the middle of the test (the Asset starts the refresh; the
        # one run unpausing makes for the last 1 January is told apart by its run type)
        "RECSYS_ONLINE_REFRESH_SCHEDULE": "0 0 1 1 *",
    }
    with patched_environ(env):
        settings = load_settings()
        try:
            yield settings
        finally:
            stack.down(settings)


def _restart(s) -> float:
    """``recsys stack down`` then ``recsys stack up``; the seconds it took."""
    from recsys import stack

    began = time.monotonic()
    stack.down(s)
    stack.up(s)
    return time.monotonic() - began


@pytest.mark.timeout(1500)
def test_new_data_flows_through_the_running_scheduler_to_triton_and_survives_restarts(loop_settings, capsys):
    from recsys import stack
    from recsys.serving.publish import rollback
    from recsys.tracking.runs import authenticate

    s = loop_settings
    timings: dict[str, float] = {}
    began = time.monotonic()
    stack.up(s)
    authenticate(s)
    timings["stack up"] = time.monotonic() - began

    client, user, catalogue = land_and_unpause(s)

    # recsys_etl: unpaused, the scheduler starts its due daily run by itself.
    mark = time.monotonic()
    etl = new_run(client, ETL, "scheduled", set())
    etl_tasks = run_done(client, s, ETL, etl["dag_run_id"])
    assert etl_tasks == {"ingest": "success", "build_features": "success", "announce_features": "success"}
    features = [e for e in client.asset_events(source_dag_id=ETL)]
    assert [(e["name"], e["source_run_id"]) for e in features] == [("recsys_features", etl["dag_run_id"])]
    feature_version = features[0]["extra"]["feature_version"]
    assert (s.features_root / feature_version / "manifest.json").exists()
    timings["etl"] = time.monotonic() - mark

    # Its features event starts training and the online refresh: asset_triggered runs, by that event.
    mark = time.monotonic()
    train = new_run(client, TRAIN, "asset_triggered", set())
    refresh = new_run(client, REFRESH, "asset_triggered", set())
    for dag_id, run in ((TRAIN, train), (REFRESH, refresh)):
        assert started_by(client, dag_id, run) == [("recsys_features", ETL, etl["dag_run_id"])], dag_id
    train_tasks = run_done(client, s, TRAIN, train["dag_run_id"])
    assert train_tasks["announce_champion"] == "success", train_tasks  # the first models (or popularity) serve
    run_done(client, s, REFRESH, refresh["dag_run_id"])
    trained = training_runs(s)
    assert len(trained) == 1 and trained[0].data.tags["recsys.feature_version"] == feature_version
    assert trained[0].data.tags["recsys.trigger"] == f"features:{feature_version}"
    timings["train"] = time.monotonic() - mark

    # The champion event starts publishing; Triton then serves version 1.
    mark = time.monotonic()
    publish = published_by_champion(client, s, train["dag_run_id"])
    assert served_versions(s) == {1}
    first_answer = answer(s, user)
    assert len(first_answer) == 5 and set(first_answer) <= catalogue, first_answer
    timings["publish"] = time.monotonic() - mark

    # The same data again (a user's manual run) while a user forces a second version out (publish v2): the
    # ETL makes the same data and feature versions, so no Asset event, so nothing retrains or republishes.
    mark = time.monotonic()
    trains_before = {r["dag_run_id"] for r in client.dag_runs(TRAIN)}
    refreshes_before = {r["dag_run_id"] for r in client.dag_runs(REFRESH) if r["run_type"] == "asset_triggered"}
    publishes_before = {r["dag_run_id"] for r in client.dag_runs(PUBLISH)}
    again = client.trigger(ETL)
    forced = client.trigger(PUBLISH, conf={"force": True})
    again_tasks = run_done(client, s, ETL, again)
    assert again_tasks["announce_features"] == "skipped", again_tasks
    run_done(client, s, PUBLISH, forced)
    scheduler_beats_after(client, client.dag_run(ETL, again)["end_date"])
    assert [e["source_run_id"] for e in client.asset_events(source_dag_id=ETL)] == [etl["dag_run_id"]]
    assert {r["dag_run_id"] for r in client.dag_runs(TRAIN)} == trains_before
    assert {r["dag_run_id"] for r in client.dag_runs(REFRESH) if r["run_type"] == "asset_triggered"} == refreshes_before
    assert {r["dag_run_id"] for r in client.dag_runs(PUBLISH)} == publishes_before | {forced}
    assert len(training_runs(s)) == 1
    assert served_versions(s) == {2}  # the forced publish: the same champion as a new version
    second_answer = answer(s, user)
    timings["same data again + publish v2"] = time.monotonic() - mark

    # A restart of the whole stack after a publish: version 2 serves (version 1 is on disk too), same answer.
    timings["restart after publish"] = _restart(s)
    assert served_versions(s) == {2}
    assert answer(s, user) == second_answer

    # A rollback to version 1, then a restart: version 1 keeps serving, with its answer.
    mark = time.monotonic()
    assert rollback(reason="system test").version == 1
    assert served_versions(s) == {1}
    timings["roll back"] = time.monotonic() - mark
    timings["restart after rollback"] = _restart(s)
    assert served_versions(s) == {1}
    assert answer(s, user) == first_answer
    client.close()

    from recsys.serving.history import served

    serving = served(s.triton_repo)
    with capsys.disabled():
        print(f"\n[loop] serving version {serving['version']}: models {serving['models']}, champions {serving['champions']}")
        print(f"[loop] runs: etl {etl['dag_run_id']}, train {train['dag_run_id']}, refresh {refresh['dag_run_id']}, "
              f"publish {publish['dag_run_id']}, etl again {again}, forced publish {forced}")
        print("[loop] " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
              + f"; total {time.monotonic() - began:.0f} s")
