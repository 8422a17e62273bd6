"""Tables and snapshots for the online store tests (small, in memory, deterministic)."""

from __future__ import annotations

import numpy as np
import pandas as pd


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
