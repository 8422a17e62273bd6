"""Bad input fails a task at once; a transient failure is retried (``recsys.jobs.failing_fast``).

The ETL DAG's ingest task through ``dag.test()``: a landing folder whose interactions name a column
the contract does not know fails on its first try (no retries, no minute lost, one alert) with the
validation message; nothing downstream runs and no data version is written. The same in the Merlin
runtime's subprocess (``recsys.jobs.merlin_task``), where Airflow alone would retry any failure.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest

from recsys.data.synthetic import SyntheticConfig, write_synthetic
from recsys.errors import InputError, ServiceError
from shared_helpers import patched_environ


def test_a_validation_error_fails_the_task_at_once_without_retries(stack_settings, airflow_db, dagbag, states, tmp_path):
    landing = tmp_path / "landing"
    write_synthetic(landing, SyntheticConfig(n_users=50, n_items=20, n_interactions=500, days=3, seed=1))
    frame = pd.read_parquet(landing / "interactions.parquet")
    frame.loc[3, "item_id"] = -7  # a negative id: the contract refuses it, naming file, column and row
    frame.to_parquet(landing / "interactions.parquet", index=False)
    with patched_environ({"RECSYS_LANDING_DIR": str(landing), "RECSYS_HOME": str(tmp_path / "home")}):
        dag = dagbag.dags["recsys_etl"]
        assert dag.get_task("ingest").retries >= 1  # a transient failure would be retried
        run = dag.test()
        ingest = next(ti for ti in run.get_task_instances() if ti.task_id == "ingest")
    assert run.state == "failed"
    assert ingest.state == "failed" and ingest.try_number == 1, (ingest.state, ingest.try_number)
    assert states(run)["build_features"] == "upstream_failed"
    assert not (tmp_path / "home" / "data").exists() or not any((tmp_path / "home" / "data").iterdir())


def test_failing_fast_turns_only_input_errors_into_a_final_failure():
    from airflow.sdk.exceptions import AirflowFailException

    from recsys import jobs

    with pytest.raises(AirflowFailException, match="not retried") as caught:
        with jobs.failing_fast():
            raise InputError("interactions.parquet: column 'item_id' row 3: -7 is not a valid id")
    assert "interactions.parquet" in str(caught.value)
    with pytest.raises(ServiceError):  # a service down: retried as before
        with jobs.failing_fast():
            raise ServiceError("Redis at 127.0.0.1:6390 is not answering")


# Three tasks in the Merlin runtime: bad configuration, a service down, a result. A DAG file of its own:
# dag.test() runs only DAGs the metadata database holds, and the subprocess runs the task's source.
MERLIN_TASKS_DAG = """
from datetime import datetime, timedelta

from airflow.sdk import dag

from recsys import jobs


@dag(dag_id="failing_fast_in_the_merlin_runtime", schedule=None, start_date=datetime(2026, 1, 1),
     default_args={"retries": 1, "retry_delay": timedelta(seconds=0)})
def failing_fast_in_the_merlin_runtime():
    @jobs.merlin_task()
    def bad_configuration() -> None:
        from recsys.errors import ConfigError

        raise ConfigError("RECSYS_EPOCHS: -1 is not a positive number of epochs")

    @jobs.merlin_task()
    def service_down() -> None:
        from recsys.errors import ServiceError

        raise ServiceError("MLflow at 127.0.0.1:1 is not answering")

    @jobs.merlin_task()
    def interpreter(n: int) -> dict:
        import sys

        return {"python": sys.executable, "n": n}

    bad_configuration()
    service_down()
    interpreter(7)


failing_fast_in_the_merlin_runtime()
"""

def test_the_merlin_runtime_fails_at_once_on_bad_input_and_retries_the_rest(stack_settings, airflow_db, tmp_path, capfd):
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    from recsys.settings import get_settings

    (tmp_path / "merlin_tasks.py").write_text(MERLIN_TASKS_DAG)
    bag = DagBag(dag_folder=str(tmp_path))
    assert bag.import_errors == {}
    DagBundlesManager().sync_bundles_to_db()  # the bundle row the DAG's row refers to
    sync_bag_to_db(bag, "dags-folder", None)
    run = bag.dags["failing_fast_in_the_merlin_runtime"].test()
    tries = {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}
    assert tries["bad_configuration"] == ("failed", 1), tries  # not retried: the same call fails the same way
    assert tries["service_down"] == ("failed", 2), tries  # retried: the service may be back
    assert tries["interpreter"] == ("success", 1), tries
    result = next(ti for ti in run.get_task_instances() if ti.task_id == "interpreter").xcom_pull(task_ids="interpreter")
    assert result == {"python": str(get_settings().merlin_python), "n": 7}  # ran there, and its result came back
    out = capfd.readouterr()
    # the final failure carries the subprocess's message (what the alert shows)
    assert "ConfigError: RECSYS_EPOCHS: -1 is not a positive number of epochs (bad input or configuration: not retried)" \
        in out.out + out.err
