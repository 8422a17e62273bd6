"""Helpers for the API tests: a small catalogue in the online store, events, a server in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import datetime, timezone
from typing import Iterator

import numpy as np
import pandas as pd

API_ENV_CLEARED = {"RECSYS_API_URL": None, "RECSYS_API_TOKEN": None}
"""A developer's shell must not point the tests at another API or make them use its token."""

USERS = np.arange(1000, 1010, dtype=np.int64)
ITEMS = np.arange(5000, 5020, dtype=np.int64)


def refresh_catalogue(store, feature_version: str = "fv-api") -> str:
    """A small online version (10 users, 20 items with titles and categories) made current; its id."""
    from recsys.online.snapshot import snapshot_from_frames

    encoded_users = np.arange(3, 3 + len(USERS), dtype=np.int64)
    encoded_items = np.arange(3, 3 + len(ITEMS), dtype=np.int64)
    snapshot = snapshot_from_frames(
        feature_version, "dv-api",
        pd.DataFrame({"user_id": encoded_users, "segment": encoded_users}), USERS,
        pd.DataFrame({"item_id": encoded_items, "price": np.ones(len(ITEMS), np.float32)}), ITEMS,
        pd.DataFrame({"user_id": USERS[:4], "item_id": ITEMS[:4], "label": np.ones(4, np.int8)}),
        pd.DataFrame({"item_id": ITEMS, "title": [f"item {i}" for i in ITEMS], "category": ["c%d" % (i % 3) for i in ITEMS]}),
        popularity_size=10,
    )
    return store.refresh(snapshot).version


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(user=1001, item=5007, event_type="purchase", **extra) -> dict:
    return {"user_id": user, "item_id": item, "event_type": event_type, "timestamp": now_iso(), **extra}


def log_length(store) -> int:
    """Entries in the event log (the stream the accept script appends to)."""
    return int(store.client.xlen(store.key_events))


def drop_keys(store) -> None:
    for key in store.client.scan_iter(match=f"{{{store.prefix}}}:*"):
        store.client.delete(key)


@contextlib.contextmanager
def app_in_thread(app, port: int, host: str = "127.0.0.1") -> Iterator[str]:
    """``app`` served by a real uvicorn server in a thread of this process; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn on port {port} did not start")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
