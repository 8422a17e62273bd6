"""Bad input fails a task at once; a transient failure is retried (``recsys.jobs.failing_fast``).

The ETL DAG's ingest task through ``dag.test()``: a landing folder whose interactions name a column
the contract does not know fails on its first try (no retries, no minute lost, one alert) with the
validation message; nothing downstream runs and no data version is written.
"""

from __future__ import annotations

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
