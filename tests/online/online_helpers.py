"""Tables and snapshots for the online store tests (small, in memory, deterministic), and a MONITOR
recorder of what clients send.

``as_string_ids(t)`` turns any of these tables into the same data with text ids (``user_text`` /
``item_text`` name each integer id's text), so every test can run on both id kinds.
``store_factory(client, inspector, prefix)``: the ``make_store`` fixtures' body, on one Redis
(tests/online) or on the distributed topology's cluster (tests/topology/test_online_store_on_cluster.py).
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pandas as pd


@contextlib.contextmanager
def store_factory(client, inspector, prefix: str):
    """Yields ``make(**kwargs)``: a RedisOnlineStore on ``client`` under the hash tag ``{prefix}`` (unless the
    test gives another); afterwards every key of ``prefix`` is unlinked through ``inspector``, the client the
    tests look at the keys with (the same one, or a plain client of the cluster node owning the prefix)."""
    from recsys.online.redis_store import RedisOnlineStore

    def make(**kwargs):
        kwargs.setdefault("prefix", prefix)
        return RedisOnlineStore(client, **kwargs)

    try:
        yield make
    finally:
        for key in inspector.scan_iter(match=f"{{{prefix}}}:*", count=1000):
            inspector.unlink(key)


def tables(n_users: int = 60, n_items: int = 25, seed: int = 0, marker: float = 0.0) -> dict:
    """Transformed and raw tables for ``snapshot_from_frames``; ``marker`` is every continuous value."""
    rng = np.random.default_rng(seed)
    user_ids = np.arange(1000, 1000 + n_users, dtype=np.int64)
    item_ids = np.arange(5000, 5000 + n_items, dtype=np.int64)
    users = pd.DataFrame(
        {
            "user_id": np.arange(3, 3 + n_users, dtype=np.int64),
            "segment": rng.integers(3, 9, n_users).astype(np.int64),
            "activity": np.full(n_users, marker, dtype=np.float32),
        }
    )
    items = pd.DataFrame(
        {
            "item_id": np.arange(3, 3 + n_items, dtype=np.int64),
            "category": rng.integers(3, 7, n_items).astype(np.int64),
            "price": np.full(n_items, marker, dtype=np.float32),
        }
    )
    raw_items = pd.DataFrame(
        {"item_id": item_ids, "title": [f"item {i}" for i in item_ids], "category": [f"c{c}" for c in items.category]}
    )
    n = n_users * 4
    interactions = pd.DataFrame(
        {
            "user_id": rng.choice(user_ids, n),
            "item_id": rng.choice(item_ids, n, p=np.linspace(2, 1, n_items) / np.linspace(2, 1, n_items).sum()),
            "label": rng.integers(0, 2, n).astype(np.int8),
        }
    )
    return {
        "users": users,
        "user_ids": user_ids,
        "items": items,
        "item_ids": item_ids,
        "interactions": interactions,
        "raw_items": raw_items,
    }


def snapshot(t: dict, feature_version: str = "fv1", data_version: str = "dv1", popularity_size: int = 10):
    from recsys.online.snapshot import snapshot_from_frames

    return snapshot_from_frames(
        feature_version,
        data_version,
        t["users"],
        t["user_ids"],
        t["items"],
        t["item_ids"],
        t["interactions"],
        t["raw_items"],
        popularity_size=popularity_size,
    )


def user_text(n) -> str:
    return f"u-{int(n):x}"


def item_text(n) -> str:
    # a non-ASCII character and a leading-zero form: text ids are kept exactly as written
    return f"SKU-0{int(n)}é" if int(n) % 7 == 0 else f"SKU-{int(n)}"


def as_string_ids(t: dict) -> dict:
    """The same tables with text ids (user 1003 -> "u-3eb", item 5003 -> "SKU-5003")."""
    out = {k: v.copy() for k, v in t.items()}
    to_users, to_items = np.vectorize(user_text, otypes=[object]), np.vectorize(item_text, otypes=[object])
    out["user_ids"] = to_users(t["user_ids"]) if len(t["user_ids"]) else np.zeros(0, object)
    out["item_ids"] = to_items(t["item_ids"]) if len(t["item_ids"]) else np.zeros(0, object)
    out["interactions"]["user_id"] = to_users(t["interactions"]["user_id"].to_numpy())
    out["interactions"]["item_id"] = to_items(t["interactions"]["item_id"].to_numpy())
    out["raw_items"]["item_id"] = to_items(t["raw_items"]["item_id"].to_numpy())
    return out


def changed_tables():
    """The base tables, and a copy with a few changes of every kind."""
    t = tables()
    t2 = {k: v.copy() for k, v in t.items()}
    t2["users"].loc[[1, 2, 3], "segment"] += 1  # users 1001-1003: new features
    t2["raw_items"].loc[[4, 5], "title"] = ["new title 4", "new title 5"]  # items 5004, 5005: new display
    # item 5024 is gone (with its interactions), and user 1010 saw one more item
    interactions = t2["interactions"]
    t2["interactions"] = interactions[interactions.item_id != 5024].reset_index(drop=True)
    unseen = sorted(set(range(5000, 5024)) - set(interactions.item_id[interactions.user_id == 1010]))
    t2["interactions"].loc[len(t2["interactions"])] = [1010, unseen[0], 1]
    t2["items"] = t2["items"].iloc[:-1].reset_index(drop=True)
    t2["item_ids"] = t2["item_ids"][:-1]
    t2["raw_items"] = t2["raw_items"].iloc[:-1].reset_index(drop=True)
    # a new user
    t2["users"].loc[len(t2["users"])] = [200, 4, 0.0]
    t2["users"] = t2["users"].astype({"user_id": np.int64, "segment": np.int64, "activity": np.float32})
    t2["user_ids"] = np.append(t2["user_ids"], 77777)
    return t, t2


def seen_of(t, user_id):
    return set(t["interactions"].item_id[t["interactions"].user_id == user_id])


def client_hset_fields(client, action, key_part: str) -> dict:
    """Run ``action`` while MONITOR records the commands; count HSET fields sent by clients (not by
    scripts running inside Redis) per key containing ``key_part``."""
    done = threading.Event()
    counts: dict[str, int] = {}
    with client.monitor() as monitor:
        def run():
            try:
                action()
            finally:
                done.set()
                client.echo("monitor-sentinel")

        thread = threading.Thread(target=run)
        thread.start()
        while True:
            line = monitor.connection.read_response()
            line = line.decode("latin-1") if isinstance(line, bytes) else line
            if "monitor-sentinel" in line and done.is_set():
                break
            source, _, rest = line.split(" ", 1)[1].partition("] ")
            args = monitor_args(rest)
            if source.endswith("lua") or not args or args[0].upper() != "HSET" or key_part not in args[1]:
                continue
            counts[args[1]] = counts.get(args[1], 0) + (len(args) - 2) // 2
        thread.join()
    return counts


def monitor_args(text: str) -> list[str]:
    """Split MONITOR's quoted, backslash-escaped arguments."""
    args, i = [], 0
    while i < len(text):
        if text[i] != '"':
            i += 1
            continue
        i += 1
        out = []
        while text[i] != '"':
            if text[i] == "\\":
                out.append(text[i : i + (4 if text[i + 1] == "x" else 2)])
                i += 4 if text[i + 1] == "x" else 2
            else:
                out.append(text[i])
                i += 1
        args.append("".join(out))
        i += 1
    return args


