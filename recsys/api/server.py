"""Run the HTTP API in the foreground with uvicorn: ``recsys api serve``, and what the stack's
:class:`~recsys.stack.api.ApiService` starts (``python -m recsys.api.server``, the settings in its
environment).

Bound to ``settings.host:settings.api_port`` (loopback by default) with ``settings.api_workers``
worker processes. With more than one worker, prometheus_client's multiprocess mode sums their
counters at scrape time: its folder (``<home>/services/api/prometheus``) is emptied here, before any
worker starts, as that mode requires.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from recsys.settings import Settings, get_settings

APP_FACTORY = "recsys.api.app:app_from_env"
GRACEFUL_SHUTDOWN_S = 10


def metrics_dir(settings: Settings) -> Path:
    return settings.services_root / "api" / "prometheus"


def serve(settings: Optional[Settings] = None) -> None:
    """Serve until interrupted (SIGINT / SIGTERM end it gracefully)."""
    import uvicorn

    from recsys.api.metrics import MULTIPROCESS_ENV

    s = settings or get_settings()
    workers = max(1, s.api_workers)
    if workers > 1 and not os.environ.get(MULTIPROCESS_ENV):
        folder = metrics_dir(s)
        shutil.rmtree(folder, ignore_errors=True)  # a previous run's counters must not be summed in
        folder.mkdir(parents=True)
        os.environ[MULTIPROCESS_ENV] = str(folder)  # inherited by the workers
    # The workers build their app from the environment: the settings must be there, not only in `s`.
    os.environ.update(s.as_env())
    get_settings.cache_clear()
    uvicorn.run(
        APP_FACTORY, factory=True, host=s.host, port=s.api_port, workers=workers if workers > 1 else None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


if __name__ == "__main__":
    serve()
