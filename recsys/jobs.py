"""The units of work the DAGs (and the CLI) run.

Each job takes plain arguments, returns a JSON-able dict (it travels through Airflow's XCom), is
idempotent (a retry or a re-run finds what an earlier try completed instead of making a duplicate), and
imports its heavy libraries inside, so the control plane can import this module without TensorFlow.

Which runtime runs which job:
- control plane: :func:`ingest_landing`, :func:`resolve_features`, :func:`champion_gate`
- Merlin runtime: :func:`build_features`, :func:`train_and_log`

How a task fails: bad input or configuration (:class:`~recsys.errors.InputError`) fails it at once,
without retries; anything else is retried. A control-plane task gets that from :func:`fails_fast`, a task
of the Merlin runtime from :func:`merlin_task`; both apply :func:`failing_fast`'s rule.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

from recsys import layout
from recsys.settings import get_settings

log = logging.getLogger(__name__)


@contextmanager
def failing_fast() -> Iterator[None]:
    """Around the work of an Airflow task (:func:`fails_fast`, :func:`merlin_task`): bad input or configuration
    (:class:`~recsys.errors.InputError`: a validation error, a missing column, a bad setting) fails the
    task at once with its message (``AirflowFailException``: no retries, one alert); anything else
    propagates and is retried (a service down, a timeout)."""
    from recsys.errors import InputError

    try:
        yield
    except InputError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(_refusal(exc)) from exc


def _refusal(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc} (bad input or configuration: not retried)"


_F = TypeVar("_F", bound=Callable[..., Any])


def fails_fast(function: _F) -> _F:
    """Decorator of a control-plane task's function, under ``@task``: :func:`failing_fast` around it."""

    @functools.wraps(function)  # Airflow passes the context arguments the wrapped signature names
    def task_function(*args: Any, **kwargs: Any) -> Any:
        with failing_fast():
            return function(*args, **kwargs)

    return task_function  # type: ignore[return-value]


# The Merlin runtime's task writes its InputError's message into the file this variable names; the
# task process (control plane) then fails the task without retries. Airflow passes only the exit status
# and str(exc) back, so a file of the task's own is the one unambiguous signal. (Dunder-prefixed like
# Airflow's own internal variables: not a setting, so not a RECSYS_ variable the CLI would flag.)
_REFUSAL_FILE_ENV = "__RECSYS_TASK_REFUSAL_FILE"


def merlin_task(**operator_kwargs: Any):
    """``@task.external_python`` in the Merlin runtime (``settings.merlin_python``) that fails fast like
    :func:`failing_fast`: an InputError inside the subprocess fails the task at once, anything else
    (a service down, a crash) is retried. It runs on the executor queue ``settings.merlin_queue`` (``gpu`` in
    the distributed topology: the Celery worker that has the Merlin runtime). Write it as ``@jobs.merlin_task(...)`` (with ``from recsys
    import jobs``): that exact name is stripped from the source the subprocess runs.

    Airflow itself turns any non-zero exit of the subprocess into a retried ``AirflowException``
    carrying ``str(exc)`` only, so the exception's class is lost: the subprocess records the refusal
    (:func:`_recording_refusals`) and the task process maps it to ``AirflowFailException``.
    """
    from airflow.sdk.bases.decorator import task_decorator_factory

    settings = get_settings()
    operator_kwargs.setdefault("python", str(settings.merlin_python))
    # One place routes every Merlin-runtime task: the queue the Merlin (GPU) Celery workers consume.
    operator_kwargs.setdefault("queue", settings.merlin_queue)
    return task_decorator_factory(decorated_operator_class=_merlin_operator_class(), **operator_kwargs)


@functools.lru_cache(maxsize=None)
def _merlin_operator_class() -> type:
    """Defined on first use: the Merlin runtime, which imports this module too, has no Airflow."""
    import tempfile

    from airflow.providers.standard.decorators.external_python import _PythonExternalDecoratedOperator
    from airflow.sdk.exceptions import AirflowFailException

    class MerlinTaskOperator(_PythonExternalDecoratedOperator):
        """``@task.external_python``'s operator (so it behaves the same), with the refusal mapping."""

        custom_operator_name = "@jobs.merlin_task"

        def get_python_source(self) -> str:
            # The subprocess script calls the task function by name: rebind that name to the recording wrapper.
            name = self.python_callable.__name__
            return (super().get_python_source()
                    + f"\n{name} = __import__('recsys.jobs', fromlist=['jobs'])._recording_refusals({name})\n")

        def execute_callable(self) -> Any:
            given = self.env_vars
            with tempfile.TemporaryDirectory(prefix="recsys-task-") as folder:
                refusal = Path(folder) / "refusal.txt"
                self.env_vars = {**(given or {}), _REFUSAL_FILE_ENV: str(refusal)}
                try:
                    return super().execute_callable()
                except Exception:
                    if refusal.exists():  # the traceback is in the log already, above
                        raise AirflowFailException(refusal.read_text()) from None
                    raise
                finally:
                    self.env_vars = given

    return MerlinTaskOperator


def _recording_refusals(function: _F) -> _F:
    """In the Merlin runtime's subprocess: an InputError's message goes to the refusal file (then the
    error propagates as usual, traceback and exit status included)."""
    from recsys.errors import InputError

    @functools.wraps(function)
    def task_function(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except InputError as exc:
            target = os.environ.get(_REFUSAL_FILE_ENV)
            if target:
                partial = Path(f"{target}.partial")  # complete or absent: the parent reads it whole
                partial.write_text(_refusal(exc))
                partial.replace(target)
            raise

    return task_function  # type: ignore[return-value]


def _merlin_job_logging() -> None:
    """Progress lines of a job in the Merlin runtime reach the Airflow task log (the subprocess's stderr).

    Also quiets what would drown them: TensorFlow's C++ INFO lines and Merlin's CPU-mode warning on every
    Dataset.
    """
    import os
    import sys
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    warnings.filterwarnings("ignore", message=".*CPU mode.*")
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    logging.getLogger("recsys").setLevel(logging.INFO)


def ingest_landing(landing: Optional[str] = None) -> dict:
    """Validate the landing folder and snapshot it as a data version (no-op if that version exists),
    after the live events accepted so far are landed there (:func:`land_events`)."""
    from recsys.data.ingest import ingest

    s = get_settings()
    landed = land_events()
    version = ingest(Path(landing) if landing else s.landing, s.data_root)
    return {"data_version": version.version, "path": str(version.path), "live_events": landed}


def land_events() -> dict:
    """Have the landing consumers write the events accepted so far into the landing folder
    (:func:`recsys.events.landing.land_accepted_events`, ``settings.events_land_timeout_seconds``).
    Without Redis nothing was accepted live: nothing to wait for."""
    import redis

    from recsys.events.landing import land_accepted_events
    from recsys.events.redis_log import RedisEventLog
    from recsys.online.redis_store import RedisOnlineStore

    s = get_settings()
    try:
        with RedisOnlineStore.from_settings(s) as store:
            return land_accepted_events(RedisEventLog(store), s.events_land_timeout_seconds)
    except redis.ConnectionError as exc:
        log.warning("live events not landed before ingesting: Redis does not answer (%s)", exc)
        return {"requested": False, "error": str(exc)}


def build_features(data_dir: str) -> dict:
    """NVTabular ETL of one data version into a feature version (Merlin runtime).

    ``created`` is False when that feature version already existed (same data, same ETL configuration).
    """
    _merlin_job_logging()
    from recsys.features.etl import run_etl
    from recsys.features.split import ValidationSplit

    s = get_settings()
    fv = run_etl(Path(data_dir), s.features_root, ValidationSplit.from_settings(s),
                 dask_scheduler_address=s.dask_scheduler)
    return {
        "feature_version": fv.version,
        "data_version": fv.data_version,
        "path": str(fv.path),
        "rows": fv.manifest["rows"],
        "created": fv.created,
    }


def resolve_features(feature_version: Optional[str] = None) -> dict:
    """The feature version to train on: the one asked for, else the newest complete one."""
    from recsys.data.versioning import get_version, latest_version

    s = get_settings()
    if feature_version:
        version = get_version(s.features_root, feature_version)  # a clear error when it does not exist
    else:
        version = latest_version(s.features_root)
        if version is None:
            from recsys.errors import RecsysError

            raise RecsysError(f"no feature version under {s.features_root}: run the recsys_etl DAG first")
    return {
        "feature_version": version.version,
        "data_version": version.manifest["data_version"],
        "path": str(version.path),
    }


TRAINING_PARAMS = ("epochs", "patience", "batch_size", "embedding_dim", "learning_rate", "lr_patience", "l2_reg", "dropout",
                   "history_length", "negatives_per_positive", "refit", "seed", "tune_trials", "tune_timeout_seconds")
"""What a training run takes (an Airflow run's ``conf``, ``recsys train`` flags); defaults from the settings."""


def training_params(overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Training parameters: settings' defaults, overridden by e.g. an Airflow run's ``conf``."""
    s = get_settings()
    params = {name: getattr(s, name) for name in TRAINING_PARAMS}
    unknown = set(overrides or {}) - set(params)
    if unknown:
        from recsys.errors import ConfigError

        raise ConfigError(f"unknown training parameter(s) {sorted(unknown)}; known: {sorted(params)}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        kind = type(params[key])
        if kind is bool and isinstance(value, str):
            value = value.strip().lower() in ("1", "true", "yes", "on")
        params[key] = kind(value)
    return params


def train_and_log(
    feature_dir: str,
    params: dict[str, Any],
    airflow_run: str,
    extra_tags: Optional[dict[str, str]] = None,
) -> dict:
    """Train both models on a feature version and log one MLflow run (Merlin runtime).

    ``airflow_run`` ("<dag_id>/<run_id>") makes the job idempotent: a finished MLflow run already logged for
    it is returned instead of training again.
    """
    _merlin_job_logging()
    import json

    from recsys.tracking import runs

    s = get_settings()
    safe_name = airflow_run.replace("/", "__").replace(":", "-").replace("+", "-")
    out_dir = s.runs_root / safe_name
    scored_with = s.runs_root / f".{safe_name}.champion.json"  # the champion this training was scored against
    c = runs.client()
    done = runs.find_finished_run(c, s.experiment_name, airflow_run)
    if done:
        log.info("MLflow run %s already holds the training for %s; not training again", done, airflow_run)
        # a try that died after finishing the run, before removing its staging copy, left it behind
        shutil.rmtree(out_dir, ignore_errors=True)
        scored_with.unlink(missing_ok=True)
        return {"run_id": done, "metrics": runs.run_metrics(c, done), "reused": True}

    # imported only to train: a retry that finds its run does not load TensorFlow
    from recsys.data.versioning import write_json_atomic
    from recsys.tracking.artifacts import write_checksums
    from recsys.training.pipeline import TrainParams, TrainResult, train_models

    tags = {runs.TAG_AIRFLOW_RUN: airflow_run, **(extra_tags or {})}
    train_params = {k: v for k, v in params.items() if k not in ("tune_trials", "tune_timeout_seconds")}
    run_id = runs.start_training_run(tags=tags, experiment=s.experiment_name, run_name=f"train-{Path(feature_dir).name}")
    scratch = s.runs_root / f".{safe_name}.champion"
    try:
        if layout.RunExports(out_dir).metrics.exists():
            # An earlier try trained completely (the folder appears only when complete) but failed to log:
            # log that training instead of training again.
            log.info("training output %s exists from an earlier try; logging it without retraining", out_dir)
            result = TrainResult.from_run_dir(out_dir)
            # Its gate metrics were scored against the champion of that try (the champion may have moved
            # since); none recorded: the gate finds no gate metrics and keeps any champion.
            champion_tags = json.loads(scored_with.read_text()) if scored_with.exists() else {}
        else:
            champion, champion_tags = _champion_exports(scratch)
            result = train_models(
                Path(feature_dir), out_dir, TrainParams(**train_params),
                tune_trials=int(params.get("tune_trials") or 0),
                tune_timeout_seconds=params.get("tune_timeout_seconds"),
                on_trial=lambda trial: runs.log_trial(run_id, trial),
                champion=champion, data_root=s.data_root,
            )
            write_json_atomic(scored_with, champion_tags)
        write_checksums(out_dir)  # publishing verifies every file against them before Triton loads it
    except BaseException:
        runs.mark_failed(c, run_id)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    final_tags = {
        runs.TAG_DATA_VERSION: result.data_version,
        runs.TAG_FEATURE_VERSION: result.feature_version,
        runs.TAG_DEVICE: result.device,
        **{runs.TAG_STOP_REASON.format(model=m): info.get("stop_reason", "") for m, info in result.stopping.items()},
    }
    final_tags.update(champion_tags)
    if result.tuning:
        final_tags["recsys.tuned"] = f"{result.tuning.get('completed', 0)} of {result.tuning.get('trials', 0)} trials completed"
    logged_params = {
        **result.params,
        "tune_trials": params.get("tune_trials", 0),
        "feature_version": result.feature_version,
        "data_version": result.data_version,
        "device": result.device,
    }
    metrics = dict(result.metrics)
    for model, rate in result.samples_per_second.items():
        metrics[f"{model}_samples_per_second"] = rate
    for model, info in result.stopping.items():
        for key in ("best_epoch", "epochs_run", "refit_epochs", "batch_size"):
            if info.get(key) is not None:
                metrics[f"{model}.{key}"] = float(info[key])
    try:
        runs.finish_training_run(run_id, metrics=metrics, history=result.history, params=logged_params,
                                 artifacts_dir=out_dir, tags=final_tags)
    except Exception as exc:
        from recsys.errors import ServiceError, error_text

        # Not an InputError: the task is retried, and the retry logs this training without training again.
        raise ServiceError(
            f"MLflow ({s.mlflow_uri}) failed while logging the training of {airflow_run} into run {run_id}: "
            f"{error_text(exc)}. The trained models are kept in {out_dir}: the task's retry logs them "
            "into a new run without training again (this run is never reused)") from exc
    # The artifacts now live in MLflow; the local copy was only a staging area.
    shutil.rmtree(out_dir, ignore_errors=True)
    scored_with.unlink(missing_ok=True)
    return {"run_id": run_id, "metrics": metrics, "reused": False}


def _champion_exports(scratch: Path):
    """(the serving champion's verified exports downloaded into ``scratch``, tags for the run).

    None while there is no champion. A champion whose exports cannot be downloaded or verified cannot be
    scored (nor served again): the run says so in ``gate.champion_unscorable`` and the gate then applies
    the popularity floor alone, so a broken champion never blocks its replacement.
    """
    from recsys.tracking.artifacts import download_champion
    from recsys.tracking.champions import ChampionError, NoChampionError, resolve_champion
    from recsys.training.rescoring import ChampionExports

    try:
        resolved = resolve_champion()
    except NoChampionError as exc:
        log.info("no champion to compare with (%s)", exc)
        return None, {}
    except ChampionError as exc:
        log.warning("the champions cannot be scored: %s", exc)
        return None, {"gate.champion_unscorable": str(exc)[:500]}
    champion = ChampionExports(scratch, resolved.run_id, resolved.versions, resolved.data_version,
                               resolved.feature_version, resolved.ranker_weight)
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        download_champion(resolved, scratch)
    except Exception as exc:  # missing or altered artifacts: the champion cannot be scored (nor served)
        log.warning("the champion's exports cannot be scored: %s", exc)
        return None, {**champion.to_tags(), "gate.champion_unscorable": f"{type(exc).__name__}: {exc}"[:500]}
    log.info("the champion (%s) will be scored on this run's new validation rows",
             ", ".join(f"{name} v{version}" for name, version in resolved.versions.items()))
    return champion, champion.to_tags()


def champion_gate(run_id: str) -> dict:
    """Register the run's models and apply the champion gate (control plane)."""
    from mlflow.exceptions import MlflowException

    from recsys.errors import ServiceError, error_text
    from recsys.tracking.registry import champion_gate as gate
    from recsys.tracking.registry import champions

    try:
        decisions = gate(run_id)
    except MlflowException as exc:
        # Retried by Airflow: registration finds the versions an earlier try created (one per model and run).
        raise ServiceError(f"MLflow ({get_settings().mlflow_uri}) failed while registering and gating run {run_id}: "
                           f"{error_text(exc)}. The task's retry registers each model of the run once") from exc
    return {
        "run_id": run_id,
        "decisions": [d.to_dict() for d in decisions],
        "new_champion": any(d.promoted for d in decisions),
        # none yet: serving answers with the popularity list of the newest data (published like a champion)
        "popularity_serving": all(c is None for c in champions().values()),
    }


# --- serving: publishing and offline recommendations (control plane) ---------------------------------
def publish_plan() -> dict:
    """What ``recsys_publish`` publishes: the champion (``champion``: :meth:`Champion.to_dict`) and the feature
    version it was trained on; while there is none (no model beats popularity yet), the popularity list of the
    newest feature version. The publish task publishes exactly this plan (or refuses if an alias moved)."""
    from recsys.serving.plan import popularity_plan
    from recsys.tracking.champions import NoChampionError, resolve_champion

    try:
        champion = resolve_champion()
    except NoChampionError:
        feature_version, data_version = popularity_plan(get_settings())
        return {"champion": None, "mode": "popularity", "feature_version": feature_version, "data_version": data_version}
    return {"champion": champion.to_dict(), "mode": "models", "feature_version": champion.feature_version,
            "data_version": champion.data_version}


def ensure_online_features(feature_version: str, data_version: str = "") -> dict:
    """Refresh the online store to ``feature_version`` unless it already holds it."""
    from recsys.online.pins import ensure_online_store

    return ensure_online_store(feature_version, data_version)


def publish_champions(airflow_run: str, force: bool = False, plan: Optional[dict] = None) -> dict:
    """Publish the champions to Triton as version N+1 (no-op when they already serve, unless ``force``).

    ``plan`` (:func:`publish_plan`): publish exactly the champion it resolved, or the popularity list of its
    feature version; refused (nothing changed) if the champion moved since.
    """
    from recsys.serving.plan import PublishPlan
    from recsys.serving.publish import publish

    return publish(force=force, airflow_run=airflow_run, plan=PublishPlan.from_dict(plan) if plan else None).to_dict()


def precompute_recommendations(airflow_run: str, force: bool = False, top_n: Optional[int] = None) -> dict:
    """Precompute every user's top N with the served model into Redis (no-op when up to date, unless ``force``)."""
    from recsys.serving.batch import precompute

    return precompute(top_n=top_n, force=force, airflow_run=airflow_run).to_dict()


# --- drift monitoring and drift-triggered training -------------------------------------------------
def drift_check(airflow_run: Optional[str] = None) -> dict:
    """Snapshot the landing folder as a data version, then run one drift check (control plane).

    Returns the check's decision fields (the full summary is in ``recsys.monitoring.store``);
    ``{"skipped": reason, "trigger": False}`` while there is no champion to judge yet.
    """
    from recsys.monitoring.check import run_drift_check
    from recsys.tracking.champions import NoChampionError

    land_events()  # the check ingests the landing folder: with the live events accepted so far
    try:  # the check ingests the landing folder (validated and hashed once; a no-op when unchanged)
        summary = run_drift_check(airflow_run=airflow_run)
    except NoChampionError as exc:
        return {"skipped": str(exc), "trigger": False, "drift": False}
    keys = ("check_id", "drift", "trigger", "reason", "share", "drifted_features", "current_data_version",
            "champion_versions", "mlflow_run_id")
    return {key: summary[key] for key in keys}


def training_plan(
    airflow_run: str,
    *,
    feature_version: Optional[str] = None,
    epochs: Optional[int] = None,
    tune_trials: Optional[int] = None,
    tune_timeout_seconds: Optional[float] = None,
    drift_check: Optional[str] = None,
    drift_events: Optional[list[dict]] = None,
    feature_events: Optional[list[dict]] = None,
) -> dict:
    """What ``recsys_train`` trains on, and why (control plane).

    A drift check (``drift_check``, or the newest in the DRIFT Asset events' extras) means: train on the
    data version that check judged; ``features`` is then None and ``data_dir`` names the data version
    that :func:`training_features` turns into a feature version first. Otherwise the feature version
    asked for, else the newest. ``tags`` go on the MLflow run (``recsys.trigger``: ``drift:<check_id>``,
    ``features:<feature_version>`` or ``manual``).
    """
    from recsys.tracking.runs import TAG_TRIGGER

    s = get_settings()
    params = training_params({"epochs": epochs, "tune_trials": tune_trials, "tune_timeout_seconds": tune_timeout_seconds})
    check_ids = [e["check_id"] for e in (drift_events or []) if e.get("check_id")]
    check_id = drift_check or (max(check_ids) if check_ids else None)  # ids sort by time: the newest
    if check_id:
        from recsys.errors import RecsysError
        from recsys.monitoring.store import get_check

        data_version = get_check(check_id)["current_data_version"]
        data_dir = layout.data_dir(s, data_version)
        if not layout.is_complete(data_dir):
            raise RecsysError(f"drift check {check_id} judged data version {data_version}, missing at {data_dir}")
        log.info("drift check %s: training on the data version it judged, %s", check_id, data_version)
        return {"features": None, "data_dir": str(data_dir), "params": params, "airflow_run": airflow_run,
                "tags": {TAG_TRIGGER: f"drift:{check_id}"}}
    new_features = [e.get("feature_version") for e in (feature_events or []) if e.get("feature_version")]
    # The feature version asked for, else the one the newest FEATURES event announced (what the trigger
    # tag names), else the newest on disk.
    features = resolve_features(feature_version or (new_features[-1] if new_features else None))
    trigger = f"features:{new_features[-1]}" if new_features and not feature_version else "manual"
    return {"features": features, "data_dir": None, "params": params, "airflow_run": airflow_run,
            "tags": {TAG_TRIGGER: trigger}}


def training_features(plan: dict) -> dict:
    """The feature version a :func:`training_plan` trains on (Merlin runtime).

    For a drift-triggered plan, the ETL of the judged data version runs first (a no-op when its feature
    version exists); otherwise the plan's feature version is returned as it is.
    """
    if plan.get("features"):
        return plan["features"]
    built = build_features(plan["data_dir"])
    log.info("feature version %s of data version %s (%s)", built["feature_version"], built["data_version"],
             "built now" if built["created"] else "existed")
    return {key: built[key] for key in ("feature_version", "data_version", "path", "created")}
