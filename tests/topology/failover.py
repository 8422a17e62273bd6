"""A failover drill on the distributed topology's Redis Cluster, shared by tests/topology/test_redis_failover.py
and bench/redis_cluster.py: ``kill -9`` the primary that holds the online store, a reader recording every read
meanwhile, the replica's takeover awaited, the killed node restarted (``stack up``) until it is a synced replica.

Versions the drill writes are ``m<N>-<seq>`` (feature version ``m<N>``) of :func:`online_helpers.tables` with
``marker=N``: every continuous value of such a version is N, so a read mixing two versions shows at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "online"))  # online_helpers: the tables


def marked_snapshot(marker: int, n_users: int = 200, n_items: int = 25):
    """A snapshot whose every continuous value is ``marker`` (feature version ``m<marker>``)."""
    from online_helpers import snapshot, tables

    return snapshot(tables(n_users=n_users, n_items=n_items, marker=float(marker)), feature_version=f"m{marker}")


def mixed(rows) -> Optional[str]:
    """Why ``rows`` (a read of a marked version) is not one whole version, or None."""
    marker = float(rows.version.split("-")[0][1:])
    if not rows.user_found or not rows.item_found.all():
        return f"{rows.version}: rows missing"
    if rows.user["activity"][0] != marker or not (rows.items["price"] == marker).all():
        return f"{rows.version}: values of another version"
    return None


@dataclass
class Read:
    at: float
    """time.monotonic() when the read returned."""
    seconds: float
    version: Optional[str] = None
    """None: the read failed."""
    error: str = ""


@dataclass
class Reader:
    """A thread reading one user's features and 25 items' through the store's own read path (one Lua script),
    continuously, on a store of its own; records every read. A read that mixes versions is recorded in ``mixed``."""

    store: Any
    pause: float = 0.002
    reads: list[Read] = field(default_factory=list)
    mixed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="failover-reader", daemon=True)

    def __enter__(self) -> "Reader":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        item_ids = list(range(5000, 5025))
        n = 0
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                rows = self.store.read(1000 + n % 200, item_ids)
            except Exception as error:  # noqa: BLE001 - every failure is a data point of the window
                self.reads.append(Read(time.monotonic(), time.monotonic() - began, None, f"{type(error).__name__}: {error}"))
            else:
                self.reads.append(Read(time.monotonic(), time.monotonic() - began, rows.version))
                problem = mixed(rows)
                if problem:
                    self.mixed.append(problem)
            n += 1
            time.sleep(self.pause)

    def good_after(self, moment: float) -> int:
        return sum(1 for r in self.reads if r.at > moment and r.version)


def failure_window(reads: list[Read], since: float) -> dict[str, Any]:
    """The reads after ``since`` (the kill): the window from the first failed read to the first good read after
    it, how many failed, and how many failed after the window closed (must be none)."""
    after = [r for r in reads if r.at >= since]
    first_bad = next((i for i, r in enumerate(after) if r.version is None), None)
    if first_bad is None:
        return {"seconds": 0.0, "failed": 0, "failed_after": 0, "errors": []}
    recovered = next((i for i in range(first_bad, len(after)) if after[i].version), None)
    end = after[recovered].at if recovered is not None else after[-1].at
    failed_after = 0 if recovered is None else sum(1 for r in after[recovered:] if r.version is None)
    errors = sorted({r.error.split(":")[0] for r in after if r.version is None})
    return {"seconds": round(end - after[first_bad].at, 3), "failed": sum(1 for r in after if r.version is None),
            "recovered": recovered is not None, "failed_after": failed_after, "errors": errors,
            "first_failure_after_kill_s": round(after[first_bad].at - since, 3)}


def store_tag(prefix: str) -> str:
    return "{" + prefix + "}"


def kill_store_primary(service, prefix: str) -> tuple[str, float]:
    """``kill -9`` the node that serves the store of ``prefix``; its name and the moment (monotonic)."""
    name, _port = service.primary_of(store_tag(prefix))
    process = next(p for p in service.processes if p.name == name)
    pid = process.pid()
    assert pid is not None, f"{name} is not running"
    os.kill(pid, signal.SIGKILL)
    return name, time.monotonic()


def wait_for_takeover(service, prefix: str, killed: str, timeout: float = 60.0) -> str:
    """Wait until a live primary other than ``killed`` serves the store and every live node says
    ``cluster_state:ok``; return that primary's name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owner = service.primary_of(store_tag(prefix))
        if owner and owner[0] != killed:
            states = [service.node_info(port).get("cluster_state") for name, port in service.nodes() if name != killed]
            if all(state == "ok" for state in states):
                return owner[0]
        time.sleep(0.1)
    raise AssertionError(f"no replica took over from {killed} within {timeout:.0f} s")


def rejoin(settings, service, node: str, timeout: float = 60.0) -> dict[str, Any]:
    """Restart what is down (``stack up``, as an operator would) and wait until ``node`` is a replica whose
    link to its primary is up (synced); returns its ``INFO replication``."""
    from recsys import stack

    stack.up(settings, only=["redis"])
    port = dict(service.nodes())[node]
    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        connection = service.node_client(port, decode_responses=True)
        try:
            info = connection.info("replication")
        finally:
            connection.close()
        if info.get("role") == "slave" and info.get("master_link_status") == "up":
            return info
        time.sleep(0.2)
    raise AssertionError(f"{node} did not rejoin as a synced replica within {timeout:.0f} s: {info}")
