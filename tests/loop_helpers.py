"""Following the loop through Airflow's REST API: the system tests of both topologies (tests/stack/test_loop.py,
tests/topology/test_distributed_loop.py) wait for runs the scheduler makes and check what started them."""

from __future__ import annotations

import time
from datetime import datetime

RUN_TIMEOUT = 600  # seconds per DAG run: generous, the machine is shared
LOOP_DAGS = ("recsys_train", "recsys_feature_refresh", "recsys_publish", "recsys_etl")  # consumers first


def land_and_unpause(s):
    """New data in the landing folder (strong tastes: the tiny models have something to learn), and the loop's DAGs
    unpaused, the consumers of Asset events first (no event may find them paused): the scheduler then starts the
    ETL's due daily run by itself. Returns the Airflow client, the most active user and the catalogue's item ids."""
    from recsys.data.contract import read_table
    from recsys.data.synthetic import SyntheticConfig, write_synthetic
    from recsys.stack.airflow_client import AirflowClient

    write_synthetic(s.landing, SyntheticConfig(n_users=300, n_items=120, n_interactions=20_000, days=14, seed=3,
                                               temperature=0.3), overwrite=True)
    interactions = read_table(s.landing, "interactions")
    user = int(interactions["user_id"].value_counts().index[0])
    catalogue = set(read_table(s.landing, "items")["item_id"].tolist())
    client = AirflowClient.from_settings(s)
    for dag_id in LOOP_DAGS:
        client.wait_for_dag(dag_id, timeout=240)
        client.unpause(dag_id)
    return client, user, catalogue


def run_done(client, s, dag_id: str, run_id: str) -> dict:
    """Wait for the run; assert it succeeded, naming its task states and log folder if not."""
    from recsys.errors import ServiceError

    logs = s.services_root / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    try:
        state = client.wait(dag_id, run_id, timeout=RUN_TIMEOUT, poll=1, progress=None)
    except ServiceError as exc:
        raise AssertionError(f"{exc}; task logs: {logs}") from None
    tasks = {t["task_id"]: t["state"] for t in client.task_instances(dag_id, run_id)}
    assert state == "success", f"{dag_id} run {run_id} ended {state}: {tasks}; task logs: {logs}"
    return tasks


def new_run(client, dag_id: str, run_type: str, known: set, timeout: float = 180) -> dict:
    """The first run of ``dag_id`` of ``run_type`` not in ``known`` (run ids), once the scheduler made it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in client.dag_runs(dag_id) if r["run_type"] == run_type and r["dag_run_id"] not in known]
        if runs:
            return runs[0]
        time.sleep(1)
    raise AssertionError(f"the scheduler made no new {run_type} run of {dag_id} within {timeout:.0f} s; "
                         f"runs: {[(r['dag_run_id'], r['run_type']) for r in client.dag_runs(dag_id)]}")


def scheduler_beats_after(client, ended: str, beats: int = 2, timeout: float = 120) -> None:
    """Wait for ``beats`` scheduler heartbeats after ``ended`` (ISO time): by then its loop, which turns
    queued Asset events into runs, has gone round since the run ended."""
    after = datetime.fromisoformat(ended)
    seen: set = set()
    deadline = time.monotonic() + timeout
    while len(seen) < beats:
        beat = client.health()["scheduler"].get("latest_scheduler_heartbeat")
        if beat and datetime.fromisoformat(beat) > after:
            seen.add(beat)
        assert time.monotonic() < deadline, f"{len(seen)} scheduler heartbeat(s) within {timeout:.0f} s after {ended}"
        time.sleep(1)


def started_by(client, dag_id: str, run: dict) -> list[tuple[str, str, str]]:
    """(asset name, source DAG, source run) of each Asset event that started ``run``."""
    return [(e["name"], e["source_dag_id"], e["source_run_id"]) for e in client.upstream_asset_events(dag_id, run["dag_run_id"])]


def served_versions(s) -> set[int]:
    """The versions of the ``recsys`` model Triton itself has loaded and ready (not what the files say)."""
    from recsys.serving.control import repository_index

    return {int(m["version"]) for m in repository_index(s) if m["name"] == "recsys" and m.get("state") == "READY"}


def answer(s, user) -> list:
    """Triton's top 5 for ``user`` (item ids, best first)."""
    from recsys.serving.client import RecommendClient

    with RecommendClient.from_settings(s) as triton:
        return [item for item, _score in triton.recommend(user, 5)]


def training_runs(s) -> list:
    from recsys.tracking.runs import client

    mlflow = client(s.mlflow_uri)
    experiment = mlflow.get_experiment_by_name(s.experiment_name)
    return mlflow.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'")


def published_by_champion(client, s, train_run_id: str) -> dict:
    """The publish run the champion event of training run ``train_run_id`` started, once it succeeded."""
    publish = new_run(client, "recsys_publish", "asset_triggered", set())
    assert started_by(client, "recsys_publish", publish) == [("recsys_champion", "recsys_train", train_run_id)]
    tasks = run_done(client, s, "recsys_publish", publish["dag_run_id"])
    assert tasks["announce_serving"] == "success", tasks
    return publish
