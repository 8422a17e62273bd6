"""The training task (``recsys.jobs.train_and_log``, in the Merlin runtime as Airflow's external_python task
runs it) and the champion gate, through real faults: the task's process SIGKILLed in the middle of training,
the MLflow server SIGKILLed while the task uploads the run's artifacts, the task SIGKILLed after it finished
but before it reported, MLflow down during the gate. Each retry uses the same Airflow run id; at the end
there is one finished MLflow run and one registered version per model, and every failure said why.

One tiny training is shared by the faults (it is the slow part): the first try dies before its models are
trained, the second trains them and they are kept when MLflow dies under it, the third logs them. (A folder
half written when the process dies is never taken for a run folder: ``atomic_directory``, see
test_killed_tasks.py's ETL.)
An MLflow of its own (its own home and port): the session's is shared by other tests.
"""

from __future__ import annotations

import logging
import time

import mlflow
import pytest

from killed_job_helpers import Job, kill_service
from recsys import jobs, stack
from recsys.errors import ServiceError
from recsys.settings import replace
from recsys.stack.mlflow import MlflowService
from recsys.stack.service import free_port
from recsys.tracking import runs
from shared_helpers import merlin_cli, patched_environ

pytestmark = pytest.mark.slow

AIRFLOW_RUN = "recsys_train/manual__faults"
RETRIES = 2  # MLflow requests retried twice (at once, then after ~4 s): a quick failure; the bound is tested
PARAMS = {"epochs": 1, "embedding_dim": 16, "batch_size": 512, "learning_rate": 0.005, "refit": False}


@pytest.fixture
def own_mlflow(stack_settings, tmp_path):
    s = replace(stack_settings, home=tmp_path / "home", mlflow_port=free_port(), mlflow_request_retries=RETRIES)
    stack.up(s, only=["mlflow"])
    yield s
    stack.down(s, only=["mlflow"])
    mlflow.set_tracking_uri(stack_settings.mlflow_uri)  # runs.client() made ours the process-wide URI


def _feature_version(s, tmp_path) -> str:
    from recsys.data.ingest import ingest
    from recsys.data.synthetic import SyntheticConfig, write_synthetic

    write_synthetic(tmp_path / "landing", SyntheticConfig(n_users=200, n_items=100, n_interactions=4000, days=14,
                                                          seed=3, temperature=0.3))
    data = ingest(tmp_path / "landing", s.data_root)
    merlin_cli(s, "etl", "--data", str(data.path))
    return str(next(p for p in s.features_root.iterdir() if not p.name.startswith(".")))


def _tries(c, s) -> dict[str, str]:
    """{run id: status} of the runs of AIRFLOW_RUN."""
    exp = runs.experiment_id(c, s.experiment_name)
    found = c.search_runs([exp], filter_string=f"tags.`{runs.TAG_AIRFLOW_RUN}` = '{AIRFLOW_RUN}'")
    return {r.info.run_id: r.info.status for r in found}


@pytest.mark.timeout(900)
def test_training_and_gate_survive_killed_tries_and_a_killed_mlflow(own_mlflow, tmp_path):
    s = own_mlflow
    env = s.child_env()  # the task's environment: this home, this MLflow (not the session's)
    features = _feature_version(s, tmp_path)
    with patched_environ({"RECSYS_HOME": str(s.home)}):
        params = jobs.training_params(PARAMS)
    out_dir = s.runs_root / AIRFLOW_RUN.replace("/", "__")

    def train(name: str, **fault) -> Job:
        return Job(s.merlin_python, env, tmp_path / f"{name}.log", "train_and_log", features, params, AIRFLOW_RUN,
                   {runs.TAG_TRIGGER: "manual"}, **fault)

    # 1. The task's process killed in the middle of training (its data loaded, the first model starting):
    # nothing written but its RUNNING run.
    first = train("1-killed-training", pause_at="steps per epoch").start()
    first.wait_paused()
    first.kill()
    assert not out_dir.exists()

    # 2. MLflow killed (-9) while the retry uploads the artifacts of a complete training: the task fails in
    # bounded time with a message saying what failed and what the retry does; the training is kept.
    second = train("2-mlflow-killed", pause_at="uploading artifacts").start()
    second.wait_paused()
    assert "logging it without retraining" not in second.stderr()  # the killed try left nothing to reuse
    kill_service(MlflowService(s))
    began = time.monotonic()
    second.resume()
    assert second.wait(timeout=180) != 0
    failed_in = time.monotonic() - began
    assert failed_in < 60, failed_in  # MLflow's default retries waited ~4 min per request (twice)
    log = second.stderr()
    assert f"ServiceError: MLflow ({s.mlflow_uri}) failed while logging the training of {AIRFLOW_RUN}" in log, log[-3000:]
    assert "without training again" in log
    assert (out_dir / "metrics.json").exists()

    stack.up(s, only=["mlflow"])
    c = runs.client(s.mlflow_uri)
    # the first try's run marked FAILED by the second; the second's left RUNNING (MLflow was down): neither
    # is FINISHED, so neither is ever reused nor gated
    assert sorted(_tries(c, s).values()) == ["FAILED", "RUNNING"]

    # 3. The retry logs the kept training into a new run, then dies before reporting (no XCom).
    third = train("3-killed-before-report", kill_before_report=True).start()
    assert third.wait(timeout=600) == -9
    assert "logging it without retraining" in third.stderr()
    tries = _tries(c, s)
    finished = [run_id for run_id, status in tries.items() if status == "FINISHED"]
    assert len(finished) == 1 and sorted(tries.values()) == ["FAILED", "FAILED", "FINISHED"], tries
    assert not out_dir.exists()  # logged: the staging copy is gone

    # 4. The next retry finds the finished run: nothing trained or logged again.
    fourth = train("4-reused").run(timeout=600)
    assert fourth["reused"] is True and fourth["run_id"] == finished[0]
    assert _tries(c, s) == tries

    # 5. MLflow killed (-9) during the gate, once the first model is registered: the gate fails saying so;
    # its retries register each model of the run once.
    class KillMlflowAfterFirstRegistration(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith(f"registered {s.retrieval_model_name} version"):
                kill_service(MlflowService(s))

    registry_log = logging.getLogger("recsys.tracking.registry")
    killer, level = KillMlflowAfterFirstRegistration(), registry_log.level
    registry_log.addHandler(killer)
    registry_log.setLevel(logging.INFO)
    with patched_environ({"RECSYS_HOME": str(s.home), "RECSYS_MLFLOW_PORT": str(s.mlflow_port),
                          "RECSYS_MLFLOW_REQUEST_RETRIES": str(RETRIES), "MLFLOW_TRACKING_URI": None,
                          # set by runs.client() from the settings: put back as they were afterwards
                          "MLFLOW_HTTP_REQUEST_MAX_RETRIES": None, "MLFLOW_HTTP_REQUEST_TIMEOUT": None}):
        began = time.monotonic()
        try:
            with pytest.raises(ServiceError, match=rf"MLflow \({s.mlflow_uri}\) failed while registering and gating run"):
                jobs.champion_gate(finished[0])
        finally:
            registry_log.removeHandler(killer)
            registry_log.setLevel(level)
        assert time.monotonic() - began < 30
        stack.up(s, only=["mlflow"])
        # the kill came between the two registrations
        assert len(c.search_model_versions(f"name = '{s.retrieval_model_name}'")) == 1
        assert c.search_model_versions(f"name = '{s.ranking_model_name}'") == []
        gates = [jobs.champion_gate(finished[0]) for _ in range(2)]  # the second: a retry after an unreported success
    for name in (s.retrieval_model_name, s.ranking_model_name):
        versions = c.search_model_versions(f"name = '{name}'")
        assert [(v.version, v.run_id) for v in versions] == [("1", finished[0])], name
    assert [d["version"] for d in gates[0]["decisions"]] == [d["version"] for d in gates[1]["decisions"]] == ["1", "1"]
