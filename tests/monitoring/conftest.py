"""A real champion to judge: synthetic data ingested, the real NVTabular ETL (Merlin runtime), and an
MLflow run registered through the real champion gate (no training: the drift check reads only the
champion's lineage tags, not its model).

Each test gets its own home (data, features, monitoring history) and its own model names and
experiments on the session's MLflow server.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from recsys.data.synthetic import SyntheticConfig, write_synthetic
from shared_helpers import log_training

# Small on purpose: the ETL runs for real, and each check runs Evidently for real.
BASE = SyntheticConfig(n_users=400, n_items=150, n_interactions=12_000, days=21, seed=5)
LATER = "2024-01-22"  # new batches start after the reference data ends


@pytest.fixture(scope="session")
def drift_world(stack_settings, tmp_path_factory) -> dict:
    """Landing folders (reference, same-distribution, drifted) and the reference data + feature versions."""
    from recsys.data.ingest import ingest
    from recsys.settings import replace

    root = tmp_path_factory.mktemp("drift-world")
    landings = {
        "reference": root / "landing-reference",
        "same": root / "landing-same",
        "drifted": root / "landing-drifted",
        "drifted-later": root / "landing-drifted-later",  # more drifted data: a second data version
    }
    write_synthetic(landings["reference"], BASE)
    write_synthetic(landings["same"], _with(BASE, n_interactions=9_000, start=LATER))
    write_synthetic(landings["drifted"], _with(BASE, n_interactions=9_000, start=LATER, drift=1.0))
    write_synthetic(landings["drifted-later"], _with(BASE, n_interactions=9_000, start=LATER, drift=1.0, seed=6))

    s = replace(stack_settings, home=root / "home")
    data = ingest(landings["reference"], s.data_root)
    subprocess.run(
        [str(s.merlin_python), "-m", "recsys.cli", "etl", "--data", str(data.path),
         "--features-root", str(s.features_root), "--validation-days", "7"],
        check=True, capture_output=True,
    )
    (feature_dir,) = [p for p in s.features_root.iterdir() if not p.name.startswith(".")]
    return {"landings": landings, "home": s.home, "data_version": data.version, "feature_version": feature_dir.name}


def _with(config: SyntheticConfig, **changes) -> SyntheticConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


@pytest.fixture
def monitored(stack_settings, drift_world, tmp_path):
    """Settings of a fresh home holding the reference versions, with a champion trained on them.

    Returns a function ``settings(landing="same", **overrides)`` giving the settings with that landing folder.
    """
    from recsys.settings import replace

    home = tmp_path / "home"
    for part in ("data", "features"):
        shutil.copytree(Path(drift_world["home"]) / part, home / part)
    suffix = uuid.uuid4().hex[:8]
    base = replace(
        stack_settings,
        home=home,
        retrieval_model_name=f"drift-retrieval-{suffix}",
        ranking_model_name=f"drift-ranking-{suffix}",
        experiment_name=f"drift-train-{suffix}",
        monitoring_experiment_name=f"drift-monitoring-{suffix}",
        drift_consecutive_checks=1,
        drift_cooldown_hours=0.0,
    )
    # the gate's metrics (no floor logged: promoted)
    champion_run_id = log_training(base, {"pipeline_recall_at_10": 0.2, "auc": 0.8}, data_version=drift_world["data_version"],
                                   feature_version=drift_world["feature_version"])

    def settings(landing: str = "same", **overrides):
        return replace(base, landing_dir=drift_world["landings"][landing], **overrides)

    settings.champion_run_id = champion_run_id
    settings.base = base
    return settings
