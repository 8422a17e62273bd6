"""`recsys etl`: in the Merlin runtime, and from the control-plane interpreter (re-run in the Merlin one)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.features import cli
from recsys.settings import PROJECT_ROOT

# merlin.io warns on every CPU Dataset; CPU is this project's normal case.
pytestmark = pytest.mark.filterwarnings("ignore:Initializing an NVTabular Dataset in CPU mode:UserWarning")


CONTROL_PYTHON = PROJECT_ROOT / ".envs" / "control" / "bin" / "python"


def test_etl_command_writes_a_feature_version(data_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="recsys")
    cli.register(parser.add_subparsers(dest="command", required=True))
    root = tmp_path / "features"
    args = parser.parse_args(["etl", "--data", str(data_dir), "--features-root", str(root), "--validation-days", "4"])
    assert args.func(args) == 0
    (version,) = [p.name for p in root.iterdir()]
    out = capsys.readouterr().out
    assert "[etl] write train" in out and f"feature version {version}: {root / version}" in out
    assert (root / version / "manifest.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not CONTROL_PYTHON.exists(), reason="no control-plane environment")
def test_control_plane_reruns_the_command_in_the_merlin_runtime(data_dir, tmp_path):
    root = tmp_path / "features"
    env = {**os.environ, "RECSYS_MERLIN_PYTHON": sys.executable, "RECSYS_HOME": str(tmp_path / "home")}
    env.pop("RECSYS_IN_MERLIN_RUNTIME", None)
    done = subprocess.run(
        [str(CONTROL_PYTHON), "-m", "recsys.cli", "etl", "--data", str(data_dir), "--features-root", str(root)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (version,) = [p.name for p in root.iterdir()]
    assert f"feature version {version}" in done.stdout
    assert "validation_days=7" in done.stdout  # the settings' default travelled to the child


@pytest.mark.skipif(not CONTROL_PYTHON.exists(), reason="no control-plane environment")
def test_control_plane_reports_a_missing_merlin_interpreter(data_dir, tmp_path):
    env = {**os.environ, "RECSYS_MERLIN_PYTHON": str(tmp_path / "nope" / "python")}
    done = subprocess.run(
        [str(CONTROL_PYTHON), "-m", "recsys.cli", "etl", "--data", str(data_dir)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "RECSYS_MERLIN_PYTHON" in done.stderr
    assert not Path(tmp_path / "nope").exists()
