"""Control a running Triton through its model-repository API (explicit model-control mode).

Publishing calls these after writing a model version into the repository:

    from recsys.serving.control import load_model, model_ready, unload_model, wait_model_ready
    load_model(settings, "recsys")                 # (re)load: Triton picks the versions of config.pbtxt's policy
    model_ready(settings, "recsys", version=3)     # True once version 3 serves

Uses ``tritonclient.http`` (present in both runtimes) through :mod:`recsys.serving.triton_client`:
the repository API (load, unload, index) with its model-control timeout, health and readiness with
the short probe timeout. The repository API is behind a key (the embedded Triton is started with
``--http-restricted-api`` / ``--grpc-restricted-protocol``; :data:`CONTROL_HEADER`): these functions
send the key of the settings (``RECSYS_TRITON_CONTROL_KEY`` or the embedded Triton's generated one);
inference, health and metadata need none.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from recsys.errors import RecsysError
from recsys.serving.triton_client import http_client
from recsys.settings import Settings


CONTROL_HEADER = "recsys-control-key"
"""Header (HTTP) and metadata key (gRPC, lower case) carrying the key of Triton's restricted APIs."""
RESTRICTED_APIS = ("model-repository", "logging", "trace")
"""Triton's API groups behind the key: loading and unloading models, and the server's own settings."""


class ServingError(RecsysError):
    """Triton refused a request or a model did not load or answer."""


def control_headers(settings: Settings) -> dict[str, str]:
    """The headers of a model-control request: the key, if Triton has one."""
    from recsys import credentials

    key = credentials.client_value(settings, credentials.TRITON_CONTROL_KEY)
    return {CONTROL_HEADER: key} if key else {}


def _health(settings: Settings, probe) -> bool:
    """``probe(client)`` of a health endpoint; False when Triton does not answer."""
    from tritonclient.utils import InferenceServerException

    try:
        client = http_client(settings, health=True)
        try:
            return bool(probe(client))
        finally:
            client.close()
    except (InferenceServerException, OSError):
        return False


def server_ready(settings: Settings) -> bool:
    """True if Triton answers ``/v2/health/ready``."""
    return _health(settings, lambda client: client.is_server_ready())


LIVENESS_PROBE_S = 2.0
"""While a load runs, Triton's liveness is probed this often; two failed probes in a row end the wait."""


def server_live(settings: Settings) -> bool:
    """True if Triton answers ``/v2/health/live`` (its process is up, loading or not)."""
    return _health(settings, lambda client: client.is_server_live())


def load_model(settings: Settings, name: str) -> None:
    """Ask Triton to (re)load ``name`` from the repository and wait until it is loaded.

    The call returns when loading ended. A reload keeps the old version serving until the new one
    is ready (Triton swaps atomically), and a failed load leaves the previously loaded versions in
    place; it waits up to :data:`~recsys.serving.triton_client.CONTROL_TIMEOUT_S`. Raises
    :class:`ServingError` with Triton's reason when loading fails, and as soon as Triton stops
    answering meanwhile (killed or crashed: the request's connection may outlive the server, kept
    open by a python-backend stub that inherited it, so only a probe tells).
    """
    import threading

    from tritonclient.utils import InferenceServerException

    outcome: list[BaseException] = []
    done = threading.Event()

    def request() -> None:  # a thread of its own: its own client (tritonclient's gevent hub is per thread)
        try:
            client = http_client(settings, control=True)
            try:
                client.load_model(name, headers=control_headers(settings))
            finally:
                client.close()
        except BaseException as exc:  # handed to the caller
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=request, name=f"triton-load-{name}", daemon=True).start()
    misses = 0
    while not done.wait(LIVENESS_PROBE_S):
        misses = 0 if server_live(settings) else misses + 1
        if misses >= 2:  # the request thread is left to its timeout (a daemon: it never holds up an exit)
            raise ServingError(f"Triton at {settings.triton_http} stopped answering while loading model {name!r} "
                               "(killed or crashed?); the load did not complete")
    if outcome and isinstance(outcome[0], InferenceServerException):
        raise ServingError(f"Triton at {settings.triton_http} could not load model {name!r}: {outcome[0].message()}") from None
    if outcome:
        raise outcome[0]


def unload_model(settings: Settings, name: str) -> None:
    """Unload every version of ``name`` (no error if it was not loaded)."""
    from tritonclient.utils import InferenceServerException

    client = http_client(settings, control=True)
    try:
        client.unload_model(name, headers=control_headers(settings))
    except InferenceServerException as exc:
        raise ServingError(f"Triton at {settings.triton_http} could not unload {name!r}: {exc.message()}") from None
    finally:
        client.close()


def model_ready(settings: Settings, name: str, version: Optional[int] = None) -> bool:
    """True if ``name`` (or that ``version`` of it) is loaded and ready."""
    from tritonclient.utils import InferenceServerException

    client = http_client(settings, health=True)
    try:
        return bool(client.is_model_ready(name, "" if version is None else str(version)))
    except InferenceServerException:
        return False
    finally:
        client.close()


def wait_model_ready(settings: Settings, name: str, version: Optional[int] = None, timeout: float = 120.0) -> None:
    """Wait until :func:`model_ready`; raise :class:`ServingError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not model_ready(settings, name, version):
        if time.monotonic() > deadline:
            raise ServingError(f"model {name!r} version {version or 'latest'} not ready after {timeout:.0f} s")
        time.sleep(0.2)


def repository_index(settings: Settings) -> list[dict[str, Any]]:
    """Triton's view of the repository: ``[{"name", "version", "state", "reason"}, ...]``."""
    client = http_client(settings, control=True)
    try:
        return list(client.get_model_repository_index(headers=control_headers(settings)))
    finally:
        client.close()
