"""The loop on the distributed topology, as users run it: every service of the topology started by the stack
(Postgres, the Redis Cluster, Celery's broker, MLflow, Airflow with the CeleryExecutor and its two workers, the
Dask cluster, both Triton replicas, the API, the event worker), landed data, the ETL run on the Dask cluster by
the ``gpu`` queue's worker, its features Asset starting training (``gpu`` queue) and the online refresh
(``default`` queue, into the cluster), the champion Asset starting the publish to both replicas, and both
answering the same recommendations.
"""

from __future__ import annotations

import time

import pytest

from loop_helpers import answer, land_and_unpause, new_run, published_by_champion, run_done, started_by, training_runs

pytestmark = pytest.mark.slow

ETL, TRAIN, REFRESH = "recsys_etl", "recsys_train", "recsys_feature_refresh"


def _queues(client, dag_id: str, run_id: str) -> dict[str, str]:
    """The queue each task of the run ran on, by whether it is Merlin-runtime work: ``{task: (merlin?, queue)}``."""
    merlin = {t["task_id"] for t in client.request("GET", f"/api/v2/dags/{dag_id}/tasks").json()["tasks"]
              if t["operator_name"] == "@jobs.merlin_task"}
    return {t["task_id"]: (t["task_id"] in merlin, t["queue"]) for t in client.task_instances(dag_id, run_id)
            if t["state"] == "success"}


def _routed_by_runtime(queues: dict) -> bool:
    """The Merlin-runtime tasks on the ``gpu`` queue (its Celery worker), every other task on ``default``."""
    return all(queue == ("gpu" if merlin else "default") for merlin, queue in queues.values())


@pytest.mark.timeout(1800)
def test_the_loop_runs_on_the_distributed_topology(topology, capsys):
    from recsys import stack
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.serving.control import repository_index
    from recsys.serving.triton_client import endpoints
    from recsys.settings import replace
    from recsys.tracking.runs import authenticate

    timings: dict[str, float] = {}
    began = time.monotonic()
    s = topology.up(*stack.SERVICE_NAMES)
    authenticate(s)
    timings["stack up"] = time.monotonic() - began

    client, user, catalogue = land_and_unpause(s)

    mark = time.monotonic()
    etl = new_run(client, ETL, "scheduled", set())["dag_run_id"]  # unpaused, the scheduler starts its due daily run
    etl_tasks = run_done(client, s, ETL, etl)
    assert etl_tasks["announce_features"] == "success", etl_tasks
    features = [e for e in client.asset_events(source_dag_id=ETL) if e["source_run_id"] == etl]
    assert [e["name"] for e in features] == ["recsys_features"]
    feature_version = features[0]["extra"]["feature_version"]
    queues = _queues(client, ETL, etl)
    assert queues["build_features"] == (True, "gpu") and _routed_by_runtime(queues), queues
    timings["etl"] = time.monotonic() - mark

    mark = time.monotonic()
    train = new_run(client, TRAIN, "asset_triggered", set())
    refresh = new_run(client, REFRESH, "asset_triggered", set())
    for dag_id, run in ((TRAIN, train), (REFRESH, refresh)):
        assert started_by(client, dag_id, run) == [("recsys_features", ETL, etl)], dag_id
    train_tasks = run_done(client, s, TRAIN, train["dag_run_id"])
    assert train_tasks["announce_champion"] == "success", train_tasks
    run_done(client, s, REFRESH, refresh["dag_run_id"])
    for dag_id, run_id in ((TRAIN, train["dag_run_id"]), (REFRESH, refresh["dag_run_id"])):
        queues = _queues(client, dag_id, run_id)
        assert _routed_by_runtime(queues), (dag_id, queues)
    assert _queues(client, TRAIN, train["dag_run_id"])["train"] == (True, "gpu")
    trained = training_runs(s)
    assert len(trained) == 1 and trained[0].data.tags["recsys.feature_version"] == feature_version
    # The refresh wrote the features into the Redis Cluster: the current online version is of this feature version.
    current = RedisOnlineStore.from_settings(s).current()
    assert current is not None and current.feature_version == feature_version, current
    timings["train + refresh"] = time.monotonic() - mark

    mark = time.monotonic()
    published_by_champion(client, s, train["dag_run_id"])
    timings["publish"] = time.monotonic() - mark

    # Both replicas serve the published version (each one's own index), and answer alike.
    replicas = endpoints(s)
    assert len(replicas) == 2
    ready = {(m["replica"], int(m["version"])) for m in repository_index(s) if m["name"] == "recsys" and m.get("state") == "READY"}
    assert ready == {(0, 1), (1, 1)}, ready
    answers = [answer(replace(s, triton_url=replica.url, triton_grpc_port=replica.grpc_port), user) for replica in replicas]
    assert answers[0] == answers[1] and len(answers[0]) == 5 and set(answers[0]) <= catalogue, answers
    assert answer(s, user) == answers[0]  # the spreading client
    client.close()

    with capsys.disabled():
        print("\n[topology loop] " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
              + f"; total {time.monotonic() - began:.0f} s")
