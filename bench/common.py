"""What several benchmarks share (not a benchmark itself).

- :func:`log`, :func:`loadavg`: progress lines with the time, and the machine's load average.
- :func:`scratch_stack`: the settings of a scratch ``RECSYS_HOME`` whose services all run on free ports
  (never a running demo's, nor another engineer's); the process environment follows them, so
  ``recsys.jobs`` (``get_settings()``), child processes and ``recsys`` CLI calls see the same stack.
- :func:`merlin_job`: a ``recsys.jobs`` function run in the Merlin runtime, the way Airflow's
  external_python task runs it.
- :func:`serve_champion`: the product's own pipeline from a landing folder to a served champion, as the
  DAGs chain it: ingest (data version) -> NVTabular ETL (feature version) -> training + MLflow run ->
  champion gate -> the online store -> publishing to Triton. Used by bench/quality.py and bench/soak.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CONTROL_BIN = ROOT / ".envs" / "control" / "bin"
MERLIN_PYTHON = ROOT / ".envs" / "merlin" / "bin" / "python"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextlib.contextmanager
def timed(name: str, timings: dict[str, float]) -> Iterator[None]:
    began = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - began, 2)


# --- a scratch home on free ports ------------------------------------------------------------------
_EXTERNAL = ("RECSYS_REDIS_URL", "RECSYS_MLFLOW_TRACKING_URI", "RECSYS_AIRFLOW_URL", "RECSYS_TRITON_URL",
             "RECSYS_API_URL", "RECSYS_EVENTS_WORKER_URL", "RECSYS_API_TOKEN", "MLFLOW_TRACKING_URI",
             "RECSYS_LANDING_DIR", "RECSYS_TRITON_REPOSITORY")


def scratch_stack(home: Path, validation_days: Optional[int] = None, extra_env: Optional[dict[str, str]] = None,
                  topology: str = "embedded"):
    """Settings of the scratch home ``home`` whose services (every one of them, of ``topology``) run embedded on
    free ports.

    The process environment follows them (``recsys.jobs`` reads ``get_settings()``; child processes and
    ``recsys`` CLI calls inherit it): external URLs set by the caller's shell are dropped. ``extra_env``
    (e.g. ``RECSYS_ONLINE_GC_GRACE_SECONDS``) is set too before the settings are read.
    """
    from recsys.settings import get_settings, load_settings
    from recsys.stack import free_ports_env

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # publishing downloads artifacts: no progress bars
    for key in _EXTERNAL:
        os.environ.pop(key, None)
    if validation_days is not None:
        os.environ["RECSYS_VALIDATION_DAYS"] = str(validation_days)
    os.environ.update({"RECSYS_HOME": str(home), "RECSYS_HOST": "127.0.0.1", "RECSYS_TOPOLOGY": topology})
    os.environ.update(free_ports_env(distributed=topology == "distributed"))
    os.environ.update(extra_env or {})
    # Not MLFLOW_TRACKING_URI: set, it makes MLflow an external server (whose clients get no embedded
    # credentials); every client derives the embedded server's URL from the port
    get_settings.cache_clear()
    settings = load_settings()
    get_settings.cache_clear()
    return settings


# --- the Merlin runtime ----------------------------------------------------------------------------
_MERLIN_CALL = """
import json, sys
from recsys import jobs
result = getattr(jobs, sys.argv[1])(*json.loads(sys.argv[2]))
print("BENCH-RESULT " + json.dumps(result, default=str), flush=True)
"""


def merlin(code: str, *argv: str, env: dict) -> dict:
    """Run ``code`` in the Merlin runtime; its progress (stderr) goes to ours, its result is the BENCH-RESULT line.

    A ``BENCH-ERROR <message>`` line is a clear error (SystemExit with the message)."""
    if not MERLIN_PYTHON.exists():
        raise SystemExit(f"error: {MERLIN_PYTHON} missing: build the environments first (`make envs`)")
    run = subprocess.run([str(MERLIN_PYTHON), "-c", code, *argv], env=env, stdout=subprocess.PIPE, text=True)
    lines = run.stdout.splitlines()
    errors = [line[len("BENCH-ERROR "):] for line in lines if line.startswith("BENCH-ERROR ")]
    if errors:
        raise SystemExit(f"error: {errors[-1]}")
    results = [line[len("BENCH-RESULT "):] for line in lines if line.startswith("BENCH-RESULT ")]
    if run.returncode != 0 or not results:
        raise SystemExit(f"the Merlin runtime failed (exit {run.returncode}):\n" + "\n".join(lines[-30:]))
    return json.loads(results[-1])


def merlin_job(function: str, *args: Any, env: dict) -> dict:
    """A ``recsys.jobs`` function in the Merlin runtime, the way Airflow's external_python task runs it."""
    return merlin(_MERLIN_CALL, function, json.dumps(list(args)), env=env)


# --- a served champion -----------------------------------------------------------------------------
def serve_champion(landing: Optional[Path], params: dict[str, Any], airflow_run: str, trigger: str, env: dict,
                   timings: dict[str, float]) -> dict[str, Any]:
    """From a landing folder to a champion served by Triton, through the product's jobs (see the module
    docstring). The stack of the current settings (Redis, MLflow, Triton) must be up.

    ``landing``: the folder to ingest (None: the settings' landing folder); ``params``: resolved training
    parameters (``recsys.jobs.training_params``); ``airflow_run``: the run tag that makes training
    idempotent; ``trigger``: recorded on the MLflow run. Fills ``timings`` (``ingest``, ``etl``,
    ``train_and_log``, ``champion_gate``, ``online_store``, ``publish``) and returns every job's answer:
    ``data``, ``features``, ``trained``, ``gate``, ``online``, ``published``.
    """
    from recsys import jobs
    from recsys.tracking import runs

    with timed("ingest", timings):
        data = jobs.ingest_landing(str(landing) if landing else None)
    log(f"  ingest: data version {data['data_version']} ({timings['ingest']} s)")
    with timed("etl", timings):
        features = merlin_job("build_features", data["path"], env=env)
    log(f"  ETL: feature version {features['feature_version']}, rows {features['rows']} ({timings['etl']} s)")
    with timed("train_and_log", timings):
        trained = merlin_job("train_and_log", features["path"], params, airflow_run, {runs.TAG_TRIGGER: trigger}, env=env)
    log(f"  training + MLflow run {trained['run_id']} ({timings['train_and_log']} s)")
    with timed("champion_gate", timings):
        gate = jobs.champion_gate(trained["run_id"])
    with timed("online_store", timings):
        online = jobs.ensure_online_features(features["feature_version"], data["data_version"])
    with timed("publish", timings):
        published = jobs.publish_champions(airflow_run)
    log(f"  gate: new champion {gate['new_champion']}; online store {online['online_version']}; "
        f"Triton version {published['version']} ({timings['champion_gate'] + timings['online_store'] + timings['publish']:.1f} s)")
    return {"data": data, "features": features, "trained": trained, "gate": gate, "online": online, "published": published}
