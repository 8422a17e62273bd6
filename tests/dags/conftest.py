"""Airflow for the DAG tests: a throw-away AIRFLOW_HOME with its own SQLite metadata database.

Airflow reads AIRFLOW_HOME when it is first imported, so it is set here, at collection time, before any
test imports Airflow.
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
