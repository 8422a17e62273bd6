"""MLflow runs: one run per training, with its parameters, per-epoch and final metrics, exports and lineage.

Works with the MLflow client of either runtime (3.5 in the Merlin runtime, 3.17 in the control plane):
it uses only the long-stable ``MlflowClient`` API.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:  # pragma: no cover - typing only
    from recsys.settings import Settings

log = logging.getLogger(__name__)

# Lineage tags every training run carries (the drift check that caused a retrain is added by monitoring).
TAG_DATA_VERSION = "recsys.data_version"
TAG_FEATURE_VERSION = "recsys.feature_version"
TAG_AIRFLOW_RUN = "recsys.airflow_run"  # "<dag_id>/<run_id>": makes a re-run find its earlier run
TAG_DEVICE = "recsys.device"
TAG_TRIGGER = "recsys.trigger"
TAG_STOP_REASON = "recsys.{model}.stop_reason"  # why early stopping ended each model's training


def client(tracking_uri: Optional[str] = None):
    """An ``MlflowClient`` of ``tracking_uri`` (default: the settings'), authenticated (:func:`authenticate`)."""
    import mlflow
    from mlflow import MlflowClient

    from recsys.settings import get_settings

    authenticate()
    configure_requests()
    uri = tracking_uri or get_settings().mlflow_uri
    # Also the process-wide URI: MLflow resolves `mlflow-artifacts:` locations (artifact upload and
    # download through the server) from it, not from the client's own URI.
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def authenticate(settings: Optional["Settings"] = None) -> None:
    """Give this process's MLflow client its user and password (MLflow reads them from
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` at each request): the settings', or the
    embedded server's generated password. The process's own settings name the server's home."""
    from recsys import credentials
    from recsys.settings import get_settings

    s = settings or get_settings()
    password = credentials.client_value(s, credentials.MLFLOW_PASSWORD)
    if password:
        os.environ["MLFLOW_TRACKING_USERNAME"] = s.mlflow_tracking_username
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password


def configure_requests(settings: Optional["Settings"] = None) -> None:
    """Bound how long this process's MLflow requests retry and wait (``settings.mlflow_request_retries``,
    ``settings.mlflow_request_timeout_seconds``). MLflow reads its variables at each request; with its
    defaults a task whose MLflow server died waited minutes per request before failing."""
    from recsys.settings import get_settings

    s = settings or get_settings()
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(s.mlflow_request_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(s.mlflow_request_timeout_seconds)


def mark_failed(mlflow_client, run_id: str) -> None:
    """Mark run ``run_id`` FAILED, best effort: when MLflow itself is what failed, the run stays RUNNING
    (never FINISHED, so never reused nor gated) until the next try of its Airflow run marks it FAILED
    (:func:`start_training_run`); the caller's own error is the one to report."""
    try:
        mlflow_client.set_terminated(run_id, status="FAILED")
    except Exception as exc:
        log.warning("run %s could not be marked FAILED (%s); the next try of its Airflow run marks it", run_id,
                    " ".join(str(exc).split())[:300])


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


def start_training_run(
    *,
    tags: Mapping[str, str],
    experiment: str,
    run_name: Optional[str] = None,
    tracking_uri: Optional[str] = None,
) -> str:
    """Create a RUNNING training run (before training: tuning trials become its children); returns its id.

    A RUNNING run left with the same Airflow run tag by an earlier try that died is marked FAILED first,
    so the experiment never shows two live runs for one Airflow run.
    """
    c = client(tracking_uri)
    exp = experiment_id(c, experiment)
    airflow_run = tags.get(TAG_AIRFLOW_RUN)
    if airflow_run:
        stale = c.search_runs([exp], filter_string=f"tags.`{TAG_AIRFLOW_RUN}` = '{airflow_run}' and attributes.status = 'RUNNING'")
        for run in stale:
            log.warning("marking run %s of an earlier try of %s FAILED", run.info.run_id, airflow_run)
            c.set_terminated(run.info.run_id, status="FAILED")
    return c.create_run(exp, run_name=run_name, tags=dict(tags)).info.run_id


def log_trial(parent_run_id: str, trial: Mapping[str, Any], tracking_uri: Optional[str] = None) -> str:
    """One tuning trial as a child run of ``parent_run_id`` (params per model, metrics, state)."""
    from mlflow.entities import Metric, Param

    c = client(tracking_uri)
    parent = c.get_run(parent_run_id)
    run = c.create_run(
        parent.info.experiment_id,
        run_name=f"trial-{trial['number']}",
        tags={"mlflow.parentRunId": parent_run_id, "recsys.trial": str(trial["number"]),
              "recsys.trial_state": str(trial["state"]), **({"recsys.trial_reason": trial["reason"]} if trial.get("reason") else {})},
    )
    params = [Param(f"{model}.{k}", str(v)) for model, values in sorted(trial["params"].items()) for k, v in sorted(values.items())]
    metrics = [Metric(k, float(v), 0, 0) for k, v in sorted(trial["metrics"].items())]
    metrics += [Metric(f"{model}.best_epoch", float(v), 0, 0) for model, v in sorted(trial.get("epochs", {}).items())]
    metrics.append(Metric("seconds", float(trial.get("seconds", 0.0)), 0, 0))
    c.log_batch(run.info.run_id, params=params, metrics=metrics)
    c.set_terminated(run.info.run_id, status="FINISHED" if trial["state"] == "complete" else "KILLED")
    return run.info.run_id


def finish_training_run(
    run_id: str,
    *,
    metrics: Mapping[str, float],
    history: Mapping[str, Mapping[str, list]],
    params: Mapping[str, Any],
    artifacts_dir: Path,
    tags: Optional[Mapping[str, str]] = None,
    tracking_uri: Optional[str] = None,
) -> str:
    """Log a training's parameters, curves, final metrics and exports into run ``run_id`` and finish it.

    ``history`` is ``{model: {metric: [value per epoch]}}``; each is logged as ``<model>.<metric>`` with the
    epoch as step, so MLflow draws the training curves. ``artifacts_dir`` (the training output folder) is
    uploaded whole. The run is marked FAILED if anything goes wrong, so it never looks complete.
    """
    c = client(tracking_uri)
    try:
        from mlflow.entities import Metric, Param, RunTag

        c.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())],
                    tags=[RunTag(k, str(v)) for k, v in sorted((tags or {}).items())])
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
        mark_failed(c, run_id)
        raise
    c.set_terminated(run_id, status="FINISHED")
    return run_id


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
    """:func:`start_training_run` and :func:`finish_training_run` in one call (a training logged afterwards)."""
    run_id = start_training_run(tags=tags, experiment=experiment, run_name=run_name, tracking_uri=tracking_uri)
    return finish_training_run(run_id, metrics=metrics, history=history, params=params, artifacts_dir=artifacts_dir,
                               tracking_uri=tracking_uri)


def run_metrics(mlflow_client, run_id: str) -> dict[str, float]:
    return dict(mlflow_client.get_run(run_id).data.metrics)
