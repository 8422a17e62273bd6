"""Helpers several test folders use (a module with its own name: `import conftest` is ambiguous).

- ``TOY_RECSYS`` / ``toy_config`` / ``toy_expected``: a tiny python-backend ``recsys`` model with the served
  model's contract (``user_id`` BYTES, ``k`` -> ``item_ids`` BYTES, ``scores``; integer ids as text),
  whose answer is a known function of the user, and which refuses the users in ``{refused}`` (format
  the source with ``refused=...``). ``legacy=True``: the contract of versions published before ids
  were text (INT64 ``user_id`` and ``item_ids``), which a rollback can bring back.
- ``patched_environ``: point ``os.environ`` (and ``get_settings()``) at a test's services, then restore.
- ``merlin_cli``: run a ``recsys`` command in the Merlin runtime with a test's settings (ingest, ETL, training);
  ``merlin_trained_run``: tiny synthetic data through the real ingest, ETL and a short training that way.
- ``triton_ports`` / ``triton_ports_env`` / ``running_triton``: a Triton of a test's own, on free ports (as
  settings fields or as environment variables), running for the length of a ``with`` block;
  ``kill_when_touched``: SIGKILL a server once a loading model touched a marker file.
- ``fake_exports`` / ``log_training`` / ``log_trained_run``: a training run logged to MLflow (tiny stand-in
  files or a real run folder) and put through the real champion gate.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator, Mapping, Optional

# Settings a developer's shell may hold that would point the tests at their own services.
CLEARED_SETTINGS = ("RECSYS_REDIS_URL", "RECSYS_AIRFLOW_URL", "RECSYS_AIRFLOW_PASSWORD", "RECSYS_TRITON_URL",
                    "MLFLOW_TRACKING_URI", "RECSYS_API_URL", "RECSYS_API_TOKEN", "RECSYS_EVENTS_WORKER_URL",
                    "RECSYS_REDIS_PASSWORD", "RECSYS_TRITON_CONTROL_KEY", "MLFLOW_TRACKING_USERNAME",
                    "MLFLOW_TRACKING_PASSWORD", "RECSYS_POSTGRES_URL", "RECSYS_CELERY_BROKER_URL",
                    "RECSYS_DASK_SCHEDULER_ADDRESS", "RECSYS_TOPOLOGY", "RECSYS_REDIS_CLUSTER", "RECSYS_GPU_QUEUE")

TOY_RECSYS = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    REFUSED = {refused}
    LEGACY = {legacy}


    class TritonPythonModel:
        def execute(self, requests):
            out = []
            for request in requests:
                user = int(pb_utils.get_input_tensor_by_name(request, "user_id").as_numpy().reshape(-1)[0])  # b"1042"
                k_tensor = pb_utils.get_input_tensor_by_name(request, "k")
                k = int(k_tensor.as_numpy()[0]) if k_tensor is not None else 10
                if user in REFUSED:
                    out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"user {{user}} refused")))
                    continue
                items = 5000 + (user + np.arange(k)) % 50
                scores = (1.0 - np.arange(k) / 100.0).astype(np.float32)
                item_text = np.array([b"%d" % i for i in items.tolist()], dtype=object)
                item_tensor = items.astype(np.int64) if LEGACY else item_text
                out.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("item_ids", item_tensor), pb_utils.Tensor("scores", scores)]))
            return out
    """
)


def toy_source(refused: tuple[int, ...] = (), legacy: bool = False) -> str:
    return TOY_RECSYS.format(refused=set(refused) or "set()", legacy=legacy)


def toy_config(instances: int = 1, legacy: bool = False) -> str:
    ids = "TYPE_INT64" if legacy else "TYPE_STRING"
    parameters = "" if legacy else (
        'parameters: { key: "user_id_kind" value: { string_value: "int" } }\n'
        'parameters: { key: "item_id_kind" value: { string_value: "int" } }'
    )
    return textwrap.dedent(
        f"""
        name: "recsys"
        backend: "python"
        max_batch_size: 0
        input [ {{ name: "user_id" data_type: {ids} dims: [ 1 ] }},
                {{ name: "k" data_type: TYPE_INT32 dims: [ 1 ] optional: true }} ]
        output [ {{ name: "item_ids" data_type: {ids} dims: [ -1 ] }},
                 {{ name: "scores" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
        """
    ) + parameters + "\n"


def toy_expected(user: int, k: int) -> list[int]:
    return [5000 + (user + j) % 50 for j in range(k)]


@contextlib.contextmanager
def patched_environ(env: Mapping[str, Optional[str]]) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` (a None value unsets that variable; settings are re-read), and put
    those variables back as they were afterwards (also when the block changed them again)."""
    saved = {key: os.environ.get(key) for key in env}
    _set_environ(env)
    try:
        yield
    finally:
        _set_environ(saved)


def _set_environ(values: Mapping[str, Optional[str]]) -> None:
    from recsys.settings import get_settings

    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


def merlin_cli(settings, *argv: str) -> None:
    """``recsys <argv>`` in the Merlin interpreter, with ``settings`` as its environment; asserts success."""
    import subprocess

    env = {**os.environ, **settings.as_env()}
    done = subprocess.run([str(settings.merlin_python), "-m", "recsys.cli", *argv], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"recsys {' '.join(argv)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def merlin_trained_run(settings, run_name: str, *generate: str) -> dict:
    """Tiny synthetic data (300 users, 200 items, 6000 interactions; ``generate``: more ``recsys data generate``
    flags) through the real ingest, ETL and a short training (the CLI in the Merlin runtime), in the home of
    ``settings``: ``{"data_dir", "features_dir", "run_dir"}``. The two-tower beats the popularity baseline,
    so the champion gate promotes the run."""
    s = settings
    source = s.home / "input"
    merlin_cli(s, "data", "generate", "--out", str(source), "--users", "300", "--items", "200",
               "--interactions", "6000", "--seed", "3", *generate)
    merlin_cli(s, "data", "ingest", str(source))
    data_dir = next(p for p in s.data_root.iterdir() if not p.name.startswith("."))
    merlin_cli(s, "etl", "--data", str(data_dir))
    features_dir = next(p for p in s.features_root.iterdir() if not p.name.startswith("."))
    run_dir = s.runs_root / run_name
    merlin_cli(s, "train", "--features", str(features_dir), "--out", str(run_dir),
               "--epochs", "8", "--embedding-dim", "16", "--batch-size", "512",
               "--learning-rate", "0.005")  # enough to beat popularity on this tiny data
    return {"data_dir": data_dir, "features_dir": features_dir, "run_dir": run_dir}


def triton_ports() -> dict[str, int]:
    """Free ports for a Triton of a test's own, as settings fields: ``replace(s, home=..., **triton_ports())``.

    A test's Triton also needs a home (its PID files, its repository) or a repository of its own."""
    from recsys.stack.service import free_port

    return {"triton_http_port": free_port(), "triton_grpc_port": free_port(), "triton_metrics_port": free_port()}


def triton_ports_env() -> dict[str, str]:
    """:func:`triton_ports` as environment variables (``RECSYS_TRITON_HTTP_PORT`` ...), for ``patched_environ``."""
    from recsys.settings import env_name

    return {env_name(name): str(port) for name, port in triton_ports().items()}


def ready_model_versions(settings) -> list[tuple[str, str]]:
    """(model, version) of every model version Triton serves: a bad request must leave it unchanged."""
    from recsys.serving import control

    return sorted((m["name"], m["version"]) for m in control.repository_index(settings) if m.get("state") == "READY")


@contextlib.contextmanager
def running_triton(settings) -> Iterator:
    """The embedded Triton of ``settings`` started for the block (yields ``settings``), stopped after it."""
    from recsys import stack

    stack.up(settings, only=["triton"])
    try:
        yield settings
    finally:
        stack.down(settings, only=["triton"])


def kill_when_touched(marker: Path, pid: int, timeout: float = 120.0):
    """A started thread that SIGKILLs ``pid`` as soon as ``marker`` exists (or after ``timeout``): a model whose
    ``initialize`` touches the marker and then sleeps makes the kill land while Triton loads it."""
    import signal
    import threading
    import time

    def kill() -> None:
        deadline = time.monotonic() + timeout
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    return killer


FAKE_EXPORTS = (
    "retrieval/query_tower/saved_model.pb",
    "retrieval/query_tower/variables/variables.index",
    "retrieval/item_embeddings.parquet",
    "ranking/dlrm/saved_model.pb",
    "workflows/user/workflow.pkl",
)


def fake_exports(folder: Path, marker: str = "") -> Path:
    """Tiny stand-ins for a training run's exports in ``folder`` (each file holds its path and ``marker``,
    so two runs with other markers differ in every file); returns ``folder``."""
    for rel in FAKE_EXPORTS:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(f"{rel} {marker}".strip().encode())
    return folder


def log_training(
    settings,
    metrics: Mapping[str, float],
    *,
    feature_version: str,
    data_version: str,
    artifacts_dir: Optional[Path] = None,
    tags: Optional[Mapping[str, str]] = None,
    history: Optional[Mapping[str, Mapping[str, list]]] = None,
    params: Optional[Mapping[str, object]] = None,
    gate: bool = True,
) -> str:
    """A finished training run in ``settings.experiment_name``, logged as the training job logs one: lineage
    tags (``feature_version``, ``data_version``; ``tags`` added), ``metrics``, and ``artifacts_dir`` uploaded
    (none: no exports); then, with ``gate``, the real champion gate. Returns the run id."""
    from recsys.tracking import registry, runs

    with tempfile.TemporaryDirectory(prefix="no-exports-") as empty:
        run_id = runs.log_training_run(
            metrics=metrics, history=history or {}, params=params or {},
            artifacts_dir=artifacts_dir if artifacts_dir is not None else Path(empty),
            tags={runs.TAG_FEATURE_VERSION: feature_version, runs.TAG_DATA_VERSION: data_version, **(tags or {})},
            experiment=settings.experiment_name, tracking_uri=settings.mlflow_uri,
        )
    if gate:
        registry.champion_gate(run_id, settings)
    return run_id


def log_trained_run(settings, run_dir: Path, quality_bonus: float = 0.0) -> str:
    """A real training folder (``recsys train --out``: its exports and ``metrics.json``) logged and gated
    like :func:`log_training`; ``quality_bonus`` is added to every metric (a better-scored copy)."""
    logged = json.loads((run_dir / "metrics.json").read_text())
    metrics = {k: float(v) + quality_bonus for k, v in logged["metrics"].items() if isinstance(v, (int, float))}
    return log_training(settings, metrics, feature_version=logged["feature_version"],
                        data_version=logged["data_version"], artifacts_dir=run_dir)


def write_test_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate it signed for localhost and 127.0.0.1, written into
    ``folder``: (ca.pem, server.pem, server.key). For TLS clients that must verify a private CA."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject, issuer, public_key, signing_key, *, ca):
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "recsys test CA")])
    ca_cert = certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    server_cert = certificate(server_name, ca_name, server_key.public_key(), ca_key, ca=False)
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths
