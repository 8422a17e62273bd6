"""Control a running Triton through its model-repository API (explicit model-control mode).

Publishing calls these after writing a model version into the repository:

    from recsys.serving.control import load_model, model_ready, unload_model, wait_model_ready
    load_model(settings, "recsys")                 # (re)load: Triton picks the versions of config.pbtxt's policy
    model_ready(settings, "recsys", version=3)     # True once version 3 serves

Several replicas (the settings' ``triton_endpoints``): without ``at=`` (one
:class:`~recsys.serving.triton_client.Endpoint`) an action (load, unload) is done on every replica in turn, the
first failure raised naming its replica, and a question (ready, live) is answered for all of them (True only
if every replica says so). Publishing relies on that: a version serves when it serves everywhere.

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
from recsys.serving.triton_client import Endpoint, endpoints, http_client
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


def _replicas(settings: Settings, at: Optional[Endpoint]) -> list[Endpoint]:
    """``[at]``, or every replica of the settings."""
    return [at] if at is not None else endpoints(settings)


def _health(settings: Settings, probe, at: Optional[Endpoint]) -> bool:
    """``probe(client)`` of a health endpoint on ``at`` (None: on every replica, True if all say so); False when
    a replica does not answer."""
    from tritonclient.utils import InferenceServerException

    for where in _replicas(settings, at):
        try:
            client = http_client(settings, health=True, at=where)
            try:
                if not probe(client):
                    return False
            finally:
                client.close()
        except (InferenceServerException, OSError):
            return False
    return True


def server_ready(settings: Settings, at: Optional[Endpoint] = None) -> bool:
    """True if Triton (``at``, default every replica) answers ``/v2/health/ready``."""
    return _health(settings, lambda client: client.is_server_ready(), at)


LIVENESS_PROBE_S = 2.0
"""While a load runs, Triton's liveness is probed this often; two failed probes in a row end the wait."""


def server_live(settings: Settings, at: Optional[Endpoint] = None) -> bool:
    """True if Triton (``at``, default every replica) answers ``/v2/health/live`` (its process is up, loading or not)."""
    return _health(settings, lambda client: client.is_server_live(), at)


def load_model(settings: Settings, name: str, at: Optional[Endpoint] = None) -> None:
    """Ask Triton (``at``, default every replica in turn) to (re)load ``name`` from the repository and wait
    until it is loaded; the first replica that fails raises, naming it (the later ones are not asked).
    """
    for where in _replicas(settings, at):
        _load_on(settings, name, where)


def _load_on(settings: Settings, name: str, at: Endpoint) -> None:
    """Ask one replica to (re)load ``name`` from the repository and wait until it is loaded.

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
            client = http_client(settings, control=True, at=at)
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
        misses = 0 if server_live(settings, at) else misses + 1
        if misses >= 2:  # the request thread is left to its timeout (a daemon: it never holds up an exit)
            raise ServingError(f"{at} stopped answering while loading model {name!r} "
                               "(killed or crashed?); the load did not complete")
    if outcome and isinstance(outcome[0], InferenceServerException):
        raise ServingError(f"{at} could not load model {name!r}: {outcome[0].message()}") from None
    if outcome and isinstance(outcome[0], OSError):  # refused: the replica is down
        raise ServingError(f"{at} is not answering, could not load model {name!r}: {outcome[0]}") from None
    if outcome:
        raise outcome[0]


def unload_model(settings: Settings, name: str, at: Optional[Endpoint] = None) -> None:
    """Unload every version of ``name`` (no error if it was not loaded) on ``at`` (default every replica)."""
    from tritonclient.utils import InferenceServerException

    for where in _replicas(settings, at):
        client = http_client(settings, control=True, at=where)
        try:
            client.unload_model(name, headers=control_headers(settings))
        except InferenceServerException as exc:
            raise ServingError(f"{where} could not unload {name!r}: {exc.message()}") from None
        finally:
            client.close()


def model_ready(settings: Settings, name: str, version: Optional[int] = None, at: Optional[Endpoint] = None) -> bool:
    """True if ``name`` (or that ``version`` of it) is loaded and ready on ``at`` (default: on every replica)."""
    from tritonclient.utils import InferenceServerException

    for where in _replicas(settings, at):
        client = http_client(settings, health=True, at=where)
        try:
            if not client.is_model_ready(name, "" if version is None else str(version)):
                return False
        except InferenceServerException:
            return False
        finally:
            client.close()
    return True


def wait_model_ready(settings: Settings, name: str, version: Optional[int] = None, timeout: float = 120.0,
                     at: Optional[Endpoint] = None) -> None:
    """Wait until :func:`model_ready`; raise :class:`ServingError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not model_ready(settings, name, version, at):
        if time.monotonic() > deadline:
            raise ServingError(f"model {name!r} version {version or 'latest'} not ready after {timeout:.0f} s"
                               + (f" on {at}" if at else ""))
        time.sleep(0.2)


def repository_index(settings: Settings, at: Optional[Endpoint] = None) -> list[dict[str, Any]]:
    """Triton's view of the repository: ``[{"name", "version", "state", "reason"}, ...]`` of ``at``; default:
    every replica's entries one after the other, each with ``replica`` (0-based) added when there are several."""
    found = []
    for where in _replicas(settings, at):
        client = http_client(settings, control=True, at=where)
        try:
            index = list(client.get_model_repository_index(headers=control_headers(settings)))
        finally:
            client.close()
        found += [{**entry, "replica": where.replica} if where.replicas > 1 and at is None else entry for entry in index]
    return found
