"""Helpers of the event tests: unique events, what landed in the landing folder, a tiny served catalogue,
the worker as a real process.

- ``event_batch(n, kinds, start)``: ``n`` unique accepted-ready events (distinct user/item/timestamp);
  ``rows(batch)``: them as (user, item, timestamp ms, event type) tuples, ids typed by the kinds.
- ``landed(folder)``: every part in ``<landing>/interactions`` read back: rows (as ``rows`` makes them),
  and per part its file, arrow schema and table.
- ``serve_catalogue(store, kinds)``: a current online version holding users ``USERS`` and items ``ITEMS``.
- ``start_worker(settings, name, log)``: ``python -m recsys.cli events worker`` with the settings' environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from recsys.data import ids
from recsys.online.store import EventBatch

USERS = list(range(1000, 1005))
ITEMS = list(range(5000, 5020))
TYPES = ("view", "click", "purchase")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
BASE_MS = int(time.time() * 1000)
"""Event timestamps count back from here (one ms per event number: unique, within the accepted age)."""


def text_id(kind: str, n: int, letter: str) -> str:
    return str(n) if kind == ids.INT else f"{letter}-{n}"


def event_batch(n: int, kinds: ids.IdKinds = ids.IdKinds(), start: int = 0, request_every: int = 3) -> EventBatch:
    """Events numbered ``start`` .. ``start + n - 1``, unique by their timestamps (``BASE_MS`` minus the
    number, in ms); items cycle over ``ITEMS``, users over ``USERS`` except every 7th event, whose user
    is new (``9000 + number``); text ids for string kinds."""
    numbers = range(start, start + n)
    return EventBatch(
        [text_id(kinds.user_id, USERS[k % len(USERS)] if k % 7 else 9000 + k, "u") for k in numbers],
        [text_id(kinds.item_id, ITEMS[k % len(ITEMS)], "SKU") for k in numbers],
        [TYPES[k % len(TYPES)] for k in numbers],
        [BASE_MS - k for k in numbers],
        [f"req-{k}" if k % request_every == 0 else "" for k in numbers],
        kinds,
    )


def rows(batch: EventBatch) -> list[tuple]:
    """The batch's events as (user, item, timestamp ms, event type), ids typed by its kinds."""
    kinds = batch.id_kinds
    return [
        (ids.parse(u, kinds.user_id, "user_id"), ids.parse(i, kinds.item_id, "item_id"), t, e)
        for u, i, t, e in zip(batch.user_ids, batch.item_ids, batch.timestamps_ms, batch.event_types)
    ]


def landed(landing: Path) -> tuple[list[tuple], list[dict]]:
    """Every live part under ``landing/interactions`` (hidden files are not parts): all their rows as
    ``rows`` makes them, and per part {path, schema, table}."""
    import pyarrow.parquet as pq

    folder = Path(landing) / "interactions"
    out, parts = [], []
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        table = pq.read_table(path)
        parts.append({"path": path, "schema": table.schema, "table": table})
        millis = table.column("timestamp").cast("int64").to_pylist()
        out += list(zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(), millis,
                        table.column("event_type").to_pylist()))
    return out, parts


def hidden_files(landing: Path) -> list[str]:
    folder = Path(landing) / "interactions"
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def serve_catalogue(store, kinds: ids.IdKinds = ids.IdKinds()) -> None:
    """Make a tiny online version current: users ``USERS``, items ``ITEMS`` (their text ids for string kinds)."""
    import numpy as np
    import pandas as pd

    from recsys.online.snapshot import snapshot_from_frames

    user_ids = ids.as_array([ids.parse(text_id(kinds.user_id, u, "u"), kinds.user_id) for u in USERS], kinds.user_id)
    item_ids = ids.as_array([ids.parse(text_id(kinds.item_id, i, "SKU"), kinds.item_id) for i in ITEMS], kinds.item_id)
    users = pd.DataFrame({"user_id": np.arange(3, 3 + len(USERS), dtype=np.int64)})
    items = pd.DataFrame({"item_id": np.arange(3, 3 + len(ITEMS), dtype=np.int64)})
    interactions = pd.DataFrame({"user_id": user_ids[:1].repeat(2), "item_id": item_ids[:2]})
    raw_items = pd.DataFrame({"item_id": item_ids, "title": [f"item {i}" for i in item_ids.tolist()]})
    snapshot = snapshot_from_frames("fv-events", "dv-events", users, user_ids, items, item_ids, interactions, raw_items,
                                    popularity_size=5, id_kinds=kinds)
    store.refresh(snapshot)


def worker_env(settings) -> dict[str, str]:
    """The environment of a worker process: this one's, the settings', and this checkout first on the path."""
    return {**os.environ, **settings.as_env(), "PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1"}


def start_worker(settings, name: str, log: Path, *extra: str) -> subprocess.Popen:
    """``recsys events worker --name NAME`` as a child process, its output appended to ``log``."""
    command = [sys.executable, "-m", "recsys.cli", "events", "worker", "--name", name, *extra]
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=worker_env(settings), cwd=PROJECT_ROOT)


def wait_for(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.05, log: Optional[Path] = None,
             process: Optional[subprocess.Popen] = None) -> object:
    """Poll ``condition`` until it is truthy (returns its value); AssertionError naming ``what`` (with the
    tail of ``log``) after ``timeout``, or as soon as ``process`` exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        exited = process is not None and process.poll() is not None
        if exited or time.monotonic() > deadline:
            tail = "\n" + log.read_text()[-3000:] if log is not None and log.exists() else ""
            why = f"the worker exited ({process.returncode})" if exited else f"timed out after {timeout} s"
            raise AssertionError(f"{why} waiting for {what}{tail}")
        time.sleep(poll)
