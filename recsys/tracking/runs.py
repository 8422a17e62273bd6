"""MLflow runs: one run per training, with its parameters, per-epoch and final metrics, exports and lineage.

Works with the MLflow client of either runtime (3.5 in the Merlin runtime, 3.17 in the control plane):
it uses only the long-stable ``MlflowClient`` API.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)

# Lineage tags every training run carries (the drift check that caused a retrain is added by monitoring).
TAG_DATA_VERSION = "recsys.data_version"
TAG_FEATURE_VERSION = "recsys.feature_version"
TAG_AIRFLOW_RUN = "recsys.airflow_run"  # "<dag_id>/<run_id>": makes a re-run find its earlier run
TAG_DEVICE = "recsys.device"
TAG_TRIGGER = "recsys.trigger"


def client(tracking_uri: Optional[str] = None):
    import mlflow
    from mlflow import MlflowClient

    from recsys.settings import get_settings

    uri = tracking_uri or get_settings().mlflow_uri
    # Also the process-wide URI: MLflow resolves `mlflow-artifacts:` locations (artifact upload and
    # download through the server) from it, not from the client's own URI.
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow_client, name: str) -> str:
    """The id of experiment ``name``, created on first use (safe when two tasks race to create it)."""
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name)
    except Exception:  # created meanwhile by someone else
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_finished_run(mlflow_client, experiment: str, airflow_run: str) -> Optional[str]:
    """A FINISHED run already logged for this Airflow run, so a re-run or retry logs no duplicate."""
    runs = mlflow_client.search_runs(
        [experiment_id(mlflow_client, experiment)],
        filter_string=f"tags.`{TAG_AIRFLOW_RUN}` = '{airflow_run}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def log_training_run(
    *,
    metrics: Mapping[str, float],
    history: Mapping[str, Mapping[str, list]],
    params: Mapping[str, Any],
    artifacts_dir: Path,
    tags: Mapping[str, str],
    experiment: str,
    run_name: Optional[str] = None,
    tracking_uri: Optional[str] = None,
) -> str:
    """Log one training as an MLflow run and return its id.

    ``history`` is ``{model: {metric: [value per epoch]}}``; each is logged as ``<model>.<metric>`` with the
    epoch as step, so MLflow draws the training curves. ``artifacts_dir`` (the training output folder) is
    uploaded whole. The run is marked FAILED if anything goes wrong, so it never looks complete.
    """
    c = client(tracking_uri)
    run = c.create_run(experiment_id(c, experiment), run_name=run_name, tags=dict(tags))
    run_id = run.info.run_id
    try:
        from mlflow.entities import Metric, Param

        c.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])
        epoch_metrics = [
            Metric(f"{model}.{name}", float(value), 0, step)
            for model, series in history.items()
            for name, values in series.items()
            for step, value in enumerate(values)
        ]
        final_metrics = [Metric(name, float(value), 0, 0) for name, value in sorted(metrics.items())]
        # log_batch accepts at most 1000 metrics per call.
        batch = epoch_metrics + final_metrics
        for start in range(0, len(batch), 1000):
            c.log_batch(run_id, metrics=batch[start : start + 1000])
        log.info("uploading artifacts from %s to run %s", artifacts_dir, run_id)
        c.log_artifacts(run_id, str(artifacts_dir))
        c.log_text(run_id, json.dumps(dict(metrics), indent=2, sort_keys=True), "metrics.json")
    except BaseException:
        c.set_terminated(run_id, status="FAILED")
        raise
    c.set_terminated(run_id, status="FINISHED")
    return run_id


def run_metrics(mlflow_client, run_id: str) -> dict[str, float]:
    return dict(mlflow_client.get_run(run_id).data.metrics)
