"""Run a ``recsys`` command in the Merlin runtime when the current interpreter is not it.

The control plane (Airflow 3) and the Merlin runtime (TensorFlow 2.12, NVTabular) live in two
environments. A command that needs NVTabular or TensorFlow, typed in the control-plane
environment, is re-run unchanged by the Merlin interpreter (``settings.merlin_python``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess

from recsys.errors import ConfigError
from recsys.settings import get_settings

# Set in the child so a Merlin interpreter that still lacks the libraries fails instead of looping.
_REEXEC_MARK = "RECSYS_IN_MERLIN_RUNTIME"


def in_merlin_runtime() -> bool:
    """True when NVTabular can be imported here (checked without importing it)."""
    return importlib.util.find_spec("nvtabular") is not None


def run_in_merlin_runtime(argv: list[str]) -> int:
    """Run ``recsys <argv>`` with the Merlin interpreter; returns its exit code (output is not captured)."""
    settings = get_settings()
    python = settings.merlin_python
    if os.environ.get(_REEXEC_MARK):
        raise ConfigError(f"{python} was expected to be the Merlin runtime, but nvtabular is not importable")
    if not python.exists():
        raise ConfigError(
            f"the Merlin runtime interpreter {python} does not exist; set RECSYS_MERLIN_PYTHON "
            "or build it with `UV_PROJECT_ENVIRONMENT=.envs/merlin uv sync --extra merlin`"
        )
    env = {**settings.child_env(), _REEXEC_MARK: "1"}
    return subprocess.call([str(python), "-m", "recsys.cli", *argv], env=env)
