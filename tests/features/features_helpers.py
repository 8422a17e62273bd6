"""Helpers for the ETL tests: a small data version folder (docs/layouts.md, section 2) built here, so
these tests do not depend on the data package.

(A module with its own name: several test folders have a conftest.py, so `import conftest` is ambiguous.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

# Newest interaction; the generator spreads interactions over the `days` before it.
END = pd.Timestamp("2024-03-31 12:00:00")


def write_data_version(
    folder: Path,
    *,
    n_users: int = 40,
    n_items: int = 30,
    n_interactions: int = 600,
    days: int = 30,
    labels: bool = True,
    seed: int = 0,
    data_version: str = "d0d0d0d0d0d0",
) -> Path:
    """Write interactions/users/items parquet + manifest.json with raw ids that are not 0..n-1."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    user_ids = 1000 + 7 * np.arange(n_users, dtype=np.int64)
    item_ids = 50_000 + 3 * np.arange(n_items, dtype=np.int64)
    ages = rng.normal(35, 10, n_users)
    ages[::9] = np.nan  # a few missing values
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "country": rng.choice(["fr", "de", "us", "jp"], n_users),
            "is_premium": rng.random(n_users) < 0.3,
            "age": ages,
        }
    )
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "category": rng.choice(["book", "music", "film"], n_items),
            "brand": rng.integers(0, 5, n_items).astype(np.int64),
            "price": rng.gamma(2.0, 10.0, n_items),
        }
    )
    seconds = rng.integers(0, days * 86_400, n_interactions)
    seconds[0] = 0  # pin the newest interaction to END exactly
    interactions = pd.DataFrame(
        {
            # skewed popularity so frequency-ordered encodings are meaningful
            "user_id": user_ids[rng.zipf(1.5, n_interactions) % n_users],
            "item_id": item_ids[rng.zipf(1.3, n_interactions) % n_items],
            "timestamp": (END - pd.to_timedelta(seconds, unit="s")).astype("datetime64[ns]"),
            "event_type": rng.choice(["click", "purchase"], n_interactions),
        }
    )
    if labels:
        interactions["label"] = (rng.random(n_interactions) < 0.4).astype(np.int8)
    interactions.to_parquet(folder / "interactions.parquet", index=False)
    users.to_parquet(folder / "users.parquet", index=False)
    items.to_parquet(folder / "items.parquet", index=False)
    manifest = {
        "data_version": data_version,
        "created_at": "2024-04-01T00:00:00+00:00",
        "source": "tests/features",
        "rows": {"interactions": n_interactions, "users": n_users, "items": n_items},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
