"""A small feature version made by the real pipeline (ingest + the NVTabular ETL), so the tests train
on exactly what the ETL writes.

The data has structure a model can learn: each user has a favourite category, most of their
interactions fall in it, and a user feature (``segment``) hints at it. Item popularity is skewed
inside each category, so the popularity baseline is non-trivial but beatable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

N_USERS = 300
N_ITEMS = 240
N_CATEGORIES = 8
DAYS = 28
VALIDATION_DAYS = 7
N_COLD = 5
START = pd.Timestamp("2024-01-01")


def _raw_tables(seed: int, with_labels: bool):
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, N_CATEGORIES, N_USERS)
    # segment agrees with the taste 70% of the time: a feature that helps but does not give it away
    segment = np.where(rng.random(N_USERS) < 0.7, taste, rng.integers(0, N_CATEGORIES, N_USERS))
    users = pd.DataFrame(
        {
            "user_id": np.arange(1000, 1000 + N_USERS, dtype=np.int64),
            "segment": [f"s{s}" for s in segment],
            "age": rng.uniform(18, 70, N_USERS).astype(np.float64),
        }
    )
    category = np.arange(N_ITEMS) % N_CATEGORIES
    items = pd.DataFrame(
        {
            "item_id": np.arange(5000, 5000 + N_ITEMS, dtype=np.int64),
            "category": [f"c{c}" for c in category],
            "price": rng.uniform(1, 100, N_ITEMS).astype(np.float64),
        }
    )
    # Zipf-like popularity inside each category
    within_rank = np.arange(N_ITEMS) // N_CATEGORIES
    weight = 1.0 / (1.0 + within_rank) ** 0.8
    rows = []
    for u in range(N_USERS):
        n = rng.integers(15, 30)
        in_taste = rng.random(n) < (0.6 if with_labels else 0.85)
        for liked in in_taste:
            pool = np.flatnonzero(category == taste[u]) if liked else np.arange(N_ITEMS)
            p = weight[pool] / weight[pool].sum()
            i = rng.choice(pool, p=p)
            seconds = int(rng.integers(0, DAYS * 86400))
            click = 1
            if with_labels:
                click = int(rng.random() < (0.75 if category[i] == taste[u] else 0.1))
            rows.append((users.user_id[u], items.item_id[i], START + pd.Timedelta(seconds=seconds), click))
    # Cold users (interactions only in the validation window) and cold items (never interacted).
    cold_users = pd.DataFrame(
        {
            "user_id": np.arange(9000, 9000 + N_COLD, dtype=np.int64),
            "segment": "s0",
            "age": rng.uniform(18, 70, N_COLD),
        }
    )
    for u in cold_users.user_id:
        for _ in range(3):
            seconds = int(rng.integers((DAYS - VALIDATION_DAYS) * 86400, DAYS * 86400))
            rows.append((u, items.item_id[rng.integers(N_ITEMS)], START + pd.Timedelta(seconds=seconds), 1))
    cold_items = pd.DataFrame(
        {
            "item_id": np.arange(8000, 8000 + N_COLD, dtype=np.int64),
            "category": "c0",
            "price": rng.uniform(1, 100, N_COLD),
        }
    )
    users = pd.concat([users, cold_users], ignore_index=True)
    items = pd.concat([items, cold_items], ignore_index=True)
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "click"])
    inter = inter.drop_duplicates(["user_id", "item_id", "timestamp"]).reset_index(drop=True)
    return users, items, inter


def build_feature_version(root: Path, *, seed: int = 7, with_labels: bool = False) -> Path:
    """Run the real pipeline (ingest, then the NVTabular ETL) on the tables above; return the feature version."""
    from recsys.data.ingest import ingest
    from recsys.features.etl import run_etl
    from recsys.features.split import ValidationSplit

    users, items, inter = _raw_tables(seed, with_labels)
    landing = root / ("landing_labels" if with_labels else "landing_implicit")
    landing.mkdir(parents=True)
    if with_labels:
        inter = inter.rename(columns={"click": "label"})
    else:
        inter = inter.drop(columns="click")
    users.to_parquet(landing / "users.parquet", index=False)
    items.to_parquet(landing / "items.parquet", index=False)
    inter.to_parquet(landing / "interactions.parquet", index=False)
    data = ingest(landing, root / "data")
    return run_etl(data.path, root / "features", ValidationSplit("time", VALIDATION_DAYS), progress=lambda *_: None).path


@pytest.fixture(scope="session")
def feature_dir(tmp_path_factory) -> Path:
    """Implicit-feedback feature version (has_labels false: every row is a positive)."""
    return build_feature_version(tmp_path_factory.mktemp("features"), with_labels=False)


@pytest.fixture(scope="session")
def labelled_feature_dir(tmp_path_factory) -> Path:
    """Feature version with shown-but-ignored rows (has_labels true)."""
    return build_feature_version(tmp_path_factory.mktemp("features"), with_labels=True)


@pytest.fixture(scope="session")
def grown_data(tmp_path_factory):
    """The same shop twice: an old data version (all but the last 7 days) and the new one (everything).

    Returns (data_root, old DataVersion, new DataVersion, new feature version path): the new version's
    time-split validation window holds exactly the interactions the old one lacks.
    """
    from recsys.data.ingest import ingest
    from recsys.features.etl import run_etl
    from recsys.features.split import ValidationSplit

    root = tmp_path_factory.mktemp("grown")
    users, items, inter = _raw_tables(11, with_labels=False)
    inter = inter.drop(columns="click")
    cutoff = inter["timestamp"].max() - pd.Timedelta(days=VALIDATION_DAYS)
    versions = []
    for name, rows in (("old", inter[inter["timestamp"] < cutoff]), ("new", inter)):
        landing = root / f"landing_{name}"
        landing.mkdir()
        users.to_parquet(landing / "users.parquet", index=False)
        items.to_parquet(landing / "items.parquet", index=False)
        rows.to_parquet(landing / "interactions.parquet", index=False)
        versions.append(ingest(landing, root / "data"))
    features = run_etl(versions[1].path, root / "features", ValidationSplit("time", VALIDATION_DAYS), progress=lambda *_: None)
    return root / "data", versions[0], versions[1], features.path
