"""Airflow for the DAG tests: a throw-away AIRFLOW_HOME with its own SQLite metadata database.

Airflow reads AIRFLOW_HOME when it is first imported, so it is set here, at collection time, before any
test imports Airflow.

``dagbag``: the project's DAGs, parsed for the test (without import errors). ``states``: a finished
``dag.test()`` run's task states by task id, ``states(dag_run)`` (what a failed run's assertion shows).
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from recsys.settings import PROJECT_ROOT

_HOME = Path(tempfile.mkdtemp(prefix="recsys-airflow-test-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
    }
)


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def airflow_db(airflow_home) -> Path:
    """A migrated metadata database (what ``dag.test()`` needs)."""
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return airflow_home


@pytest.fixture()
def dagbag(airflow_home):
    """Every DAG of ``dags/``, parsed for this test; no file may fail to import.

    Parsed per test, on purpose: ``dag.test(run_conf=...)`` writes the conf into the tasks' ``Param``
    objects, which a deep copy of the DAG shares, so a DagBag kept for the session leaked one test's run
    conf (a drift check id) into the next test's runs. The DAG files read settings when parsed (schedules,
    the Merlin interpreter, parameter defaults): tests pass such values to ``dag.test(run_conf=...)``.
    """
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


@pytest.fixture(scope="session")
def states():
    """``states(dag_run)``: ``{task_id: state}`` of a finished ``dag.test()`` run."""
    return lambda dag_run: {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
