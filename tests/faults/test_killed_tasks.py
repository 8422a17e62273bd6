"""A task's process SIGKILLed, then retried with the same arguments (what Airflow's retry does): the ETL
(``recsys.jobs.build_features``, Merlin runtime), the online refresh (``recsys.jobs.ensure_online_features``)
and publishing (``recsys.jobs.publish_champions``, both control plane), each killed in the middle of its work
and after its work was done but before it reported.
The retry redoes a half-done job cleanly (no half artifact is ever taken for a whole one) and finds a
done one instead of doing it twice. (The training task's kills: test_training_faults.py.)

The jobs run in their own processes (:mod:`killed_job_helpers`), not under a real Airflow worker: the
kill is the same, and a retry calls the same function with the same arguments.
"""

from __future__ import annotations

import sys
import time

import pytest

from killed_job_helpers import Job
from recsys import stack
from recsys.layout import TritonRepository
from recsys.settings import replace
from recsys.stack.service import free_port
from shared_helpers import merlin_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(stack_settings, tmp_path_factory):
    """A home of its own with its own Redis, one data version and its feature version (the real ETL)."""
    from recsys.data.ingest import ingest
    from recsys.data.synthetic import SyntheticConfig, write_synthetic

    root = tmp_path_factory.mktemp("killed-tasks")
    s = replace(stack_settings, home=root / "home", redis_port=free_port(), online_batch_size=20)
    write_synthetic(root / "landing", SyntheticConfig(n_users=200, n_items=100, n_interactions=4000, days=14, seed=3))
    data = ingest(root / "landing", s.data_root)
    merlin_cli(s, "etl", "--data", str(data.path))
    stack.up(s, only=["redis"])
    yield s, data
    stack.down(s, only=["redis"])


def _versions(root) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def test_etl_task_killed_mid_build_then_after_building(built, tmp_path):
    source, data = built
    s = replace(source, home=tmp_path / "home")  # features written here; the data version is the fixture's
    env = s.child_env()

    def etl(name: str, **fault) -> Job:
        return Job(s.merlin_python, env, tmp_path / f"{name}.log", "build_features", str(data.path), **fault)

    # Killed while it writes the feature version: its staging folder holds files when the kill lands.
    first = etl("1-killed-building").start()
    deadline = time.monotonic() + 300
    while not any(f.is_file() for p in s.features_root.glob(".*.tmp-*") for f in p.rglob("*")):
        assert first.proc.poll() is None and time.monotonic() < deadline, first.stderr()[-3000:]
        time.sleep(0.05)
    first.kill()
    assert _versions(s.features_root) == []  # the half version is a hidden staging folder, never a version
    from recsys.data.versioning import latest_version

    assert latest_version(s.features_root) is None

    # The retry builds it whole, and is killed once done, before reporting.
    second = etl("2-killed-before-report", kill_before_report=True).start()
    assert second.wait(timeout=600) == -9
    built_versions = _versions(s.features_root)
    assert len(built_versions) == 1 and (s.features_root / built_versions[0] / "manifest.json").exists()

    # The next retry finds it: no second build, the same version reported.
    third = etl("3-retry")
    result = third.run(timeout=600)
    assert result["created"] is False and result["feature_version"] == built_versions[0]
    assert _versions(s.features_root) == built_versions
    assert f"feature version {built_versions[0]} already exists" in third.out  # the ETL's progress: on stdout


def test_online_refresh_task_killed_mid_refresh_then_after_refreshing(built, tmp_path):
    from recsys.online.redis_store import RedisOnlineStore

    s, data = built
    env = s.child_env()
    feature_version = _versions(s.features_root)[0]

    def refresh(name: str, **fault) -> Job:
        return Job(sys.executable, env, tmp_path / f"{name}.log", "ensure_online_features", feature_version,
                   data.version, **fault)

    # Killed in the middle of writing the users: the half version never becomes current.
    first = refresh("1-killed-refreshing", pause_at=" users written").start()
    first.wait_paused()
    first.kill()
    with RedisOnlineStore.from_settings(s) as store:
        assert store.current() is None
        half = [v.decode() for v in store.client.zrange(store.key_writing, 0, -1)]
    assert len(half) == 1  # known as unfinished: collected once stale

    # The retry refreshes in full, and is killed once done, before reporting.
    second = refresh("2-killed-before-report", kill_before_report=True).start()
    assert second.wait(timeout=300) == -9
    with RedisOnlineStore.from_settings(s) as store:
        current = store.current()
        assert current is not None and current.feature_version == feature_version and current.version not in half

    # The next retry finds it: nothing written again, the same version reported.
    third = refresh("3-retry").run(timeout=300)
    assert third == {"refreshed": False, "online_version": current.version, "feature_version": feature_version}
    with RedisOnlineStore.from_settings(s) as store:
        assert store.current().version == current.version


def test_publish_task_killed_while_loading_then_after_publishing(built, tmp_path):
    from recsys.serving.smoke import is_ready
    from recsys.serving.history import read_history
    from shared_helpers import running_triton, triton_ports

    source, data = built
    # registered model names of its own: no champion, so the plan is the popularity list of the feature version
    s = replace(source, **triton_ports(), retrieval_model_name=f"faults-{tmp_path.name}-retrieval",
                ranking_model_name=f"faults-{tmp_path.name}-ranking")
    plan = {"champion": None, "mode": "popularity", "feature_version": _versions(s.features_root)[0],
            "data_version": data.version}
    env = s.child_env()
    from recsys.online.pins import ensure_online_store

    ensure_online_store(plan["feature_version"], data.version, settings=s)  # the DAG's task before publishing

    def publish(name: str, force: bool = False, **fault) -> Job:
        return Job(sys.executable, env, tmp_path / f"{name}.log", "publish_champions", "recsys_publish/faults",
                   force, plan, **fault)

    with running_triton(s):
        # Killed once the new version is on disk, before Triton loads it: nothing was recorded as serving.
        first = publish("1-killed-loading", pause_at="loading ").start()
        first.wait_paused()
        first.kill()
        assert read_history(s.triton_repo) == []
        repo = TritonRepository(s.triton_repo)
        assert {m: repo.versions(m) for m in repo.models()} == {m: [1] for m in repo.models()} != {}  # left behind

        # The retry publishes (under the next number: the killed try's folder may have been loaded), and is
        # killed once done, before reporting.
        second = publish("2-killed-before-report", kill_before_report=True).start()
        assert second.wait(timeout=300) == -9
        history = read_history(s.triton_repo)
        assert [(h["action"], h["status"]) for h in history] == [("publish", "serving")]
        served = history[0]
        assert served["version"] == 2  # the killed try's number is never reused
        assert all(is_ready(s, model, served["version"]) for model in served["models"])

        # The next retry finds the plan served: nothing written, loaded or recorded again.
        third = publish("3-retry").run(timeout=300)
        assert third["published"] is False and third["version"] == served["version"]
        assert read_history(s.triton_repo) == history

        # Killed again once its version 3 is on disk and active, with version 2 recorded as serving: the
        # repository is ahead of its history. The retry first puts it back (the never-tested 3 removed, so
        # no restarted Triton could load it), then publishes under the next number.
        fourth = publish("4-killed-loading", force=True, pause_at="loading ").start()
        fourth.wait_paused()
        fourth.kill()
        assert {m: repo.versions(m)[-1] for m in served["models"]} == {m: 3 for m in served["models"]}
        assert any(repo.staging_root.iterdir())  # the killed try's download and written version
        fifth = publish("5-retry", force=True).run(timeout=300)
        assert fifth["published"] is True and fifth["version"] == 4
        assert not any(repo.staging_root.iterdir())
        assert all(3 not in repo.versions(m) for m in served["models"])
        assert [(h["version"], h["status"]) for h in read_history(s.triton_repo)] == [
            (2, "serving"), (3, "interrupted"), (4, "serving")]
