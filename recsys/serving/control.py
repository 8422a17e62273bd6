"""Control a running Triton through its model-repository API (explicit model-control mode).

Publishing calls these after writing a model version into the repository:

    from recsys.serving.control import load_model, model_ready, unload_model, wait_model_ready
    load_model(settings, "recsys")                 # (re)load: Triton picks the versions of config.pbtxt's policy
    model_ready(settings, "recsys", version=3)     # True once version 3 serves

Uses ``tritonclient.http`` (present in both runtimes) through :mod:`recsys.serving.triton_client`:
the repository API (load, unload, index) with its model-control timeout, health and readiness with
the short probe timeout.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from recsys.errors import RecsysError
from recsys.serving.triton_client import http_client
from recsys.settings import Settings


class ServingError(RecsysError):
    """Triton refused a request or a model did not load or answer."""


def server_ready(settings: Settings) -> bool:
    """True if Triton answers ``/v2/health/ready``."""
    from tritonclient.utils import InferenceServerException

    try:
        client = http_client(settings, health=True)
        try:
            return bool(client.is_server_ready())
        finally:
            client.close()
    except (InferenceServerException, OSError):
        return False


def load_model(settings: Settings, name: str) -> None:
    """Ask Triton to (re)load ``name`` from the repository and wait until it is loaded.

    The call returns when loading ended. A reload keeps the old version serving until the new one
    is ready (Triton swaps atomically), and a failed load leaves the previously loaded versions in
    place; it waits up to :data:`~recsys.serving.triton_client.CONTROL_TIMEOUT_S`. Raises
    :class:`ServingError` with Triton's reason when loading fails.
    """
    from tritonclient.utils import InferenceServerException

    client = http_client(settings, control=True)
    try:
        client.load_model(name)
    except InferenceServerException as exc:
        raise ServingError(f"Triton at {settings.triton_http} could not load model {name!r}: {exc.message()}") from None
    finally:
        client.close()


def unload_model(settings: Settings, name: str) -> None:
    """Unload every version of ``name`` (no error if it was not loaded)."""
    from tritonclient.utils import InferenceServerException

    client = http_client(settings, control=True)
    try:
        client.unload_model(name)
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
        return list(client.get_model_repository_index())
    finally:
        client.close()
