"""A small feature version in the layout of docs/layouts.md section 3, built with a real NVTabular
workflow so the schema files, tags and encodings are the ones the ETL writes.

The data has structure a model can learn: each user has a favourite category, most of their
interactions fall in it, and a user feature (``segment``) hints at it. Item popularity is skewed
inside each category, so the popularity baseline is non-trivial but beatable.
"""

from __future__ import annotations

import json
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
    """Write a feature version folder under ``root`` and return its path."""
    import nvtabular as nvt
    from merlin.schema import Tags
    from merlin.dag.ops.subgraph import Subgraph
    from nvtabular import ops

    users, items, inter = _raw_tables(seed, with_labels)
    out = root / ("fv_labels" if with_labels else "fv_implicit")
    out.mkdir(parents=True)

    user_graph = Subgraph(
        "user",
        (["user_id"] >> ops.Categorify() >> ops.TagAsUserID())
        + (["segment"] >> ops.Categorify() >> ops.TagAsUserFeatures())
        + (["age"] >> ops.Normalize() >> ops.TagAsUserFeatures()),
    )
    item_graph = Subgraph(
        "item",
        (["item_id"] >> ops.Categorify() >> ops.TagAsItemID())
        + (["category"] >> ops.Categorify() >> ops.TagAsItemFeatures())
        + (["price"] >> ops.Normalize() >> ops.TagAsItemFeatures()),
    )
    target = ["click"] >> ops.AddTags([Tags.TARGET, Tags.BINARY_CLASSIFICATION])
    workflow = nvt.Workflow(user_graph + item_graph + target + ["timestamp"])

    split_at = START + pd.Timedelta(days=DAYS - VALIDATION_DAYS)
    joined = inter.merge(users, on="user_id").merge(items, on="item_id")
    joined["timestamp_unix"] = joined.timestamp.astype("int64") // 10**9
    joined = joined.sort_values("timestamp").reset_index(drop=True)
    train_raw = joined[joined.timestamp < split_at].drop(columns="timestamp")
    valid_raw = joined[joined.timestamp >= split_at].drop(columns="timestamp")
    train_raw = train_raw.rename(columns={"timestamp_unix": "timestamp"})
    valid_raw = valid_raw.rename(columns={"timestamp_unix": "timestamp"})

    # Fit on the training window plus every user and item so all ids get a code.
    # Fitted on the training window only, like the ETL: users and items absent from it (the
    # cold ones below) share the out-of-vocabulary code.
    workflow.fit(nvt.Dataset(train_raw))
    workflow.transform(nvt.Dataset(train_raw)).to_parquet(str(out / "train"))
    workflow.transform(nvt.Dataset(valid_raw)).to_parquet(str(out / "valid"))
    user_wf = workflow.get_subworkflow("user")
    item_wf = workflow.get_subworkflow("item")
    user_wf.transform(nvt.Dataset(users)).to_parquet(str(out / "users"))
    item_wf.transform(nvt.Dataset(items)).to_parquet(str(out / "items"))
    user_wf.save(str(out / "workflows" / "user"))
    item_wf.save(str(out / "workflows" / "item"))

    (out / "id_maps").mkdir()
    encoded_users = user_wf.transform(nvt.Dataset(users[["user_id"]].assign(segment="s0", age=0.0)))
    encoded_users = encoded_users.to_ddf().compute()
    pd.DataFrame({"user_id_raw": users.user_id, "user_id": encoded_users.user_id.values}).to_parquet(
        out / "id_maps" / "users.parquet", index=False
    )
    encoded_items = item_wf.transform(nvt.Dataset(items)).to_ddf().compute()
    pd.DataFrame({"item_id_raw": items.item_id, "item_id": encoded_items.item_id.values}).to_parquet(
        out / "id_maps" / "items.parquet", index=False
    )

    schema = workflow.output_schema
    cardinalities = {
        col.name: int(col.int_domain.max) + 1
        for col in schema
        if Tags.CATEGORICAL in col.tags and col.int_domain is not None
    }
    manifest = {
        "feature_version": f"fixture-{seed}-{int(with_labels)}",
        "data_version": f"data-{seed}",
        "created_at": pd.Timestamp.utcnow().isoformat(),
        "validation_days": VALIDATION_DAYS,
        "split": {
            "train_start": START.isoformat(),
            "train_end": split_at.isoformat(),
            "valid_start": split_at.isoformat(),
            "valid_end": (START + pd.Timedelta(days=DAYS)).isoformat(),
        },
        "rows": {"train": len(train_raw), "valid": len(valid_raw), "users": len(users), "items": len(items)},
        "columns": {
            "user_id": "user_id",
            "item_id": "item_id",
            "target": "click",
            "user_categorical": ["segment"],
            "user_continuous": ["age"],
            "item_categorical": ["category"],
            "item_continuous": ["price"],
        },
        "cardinalities": cardinalities,
        "has_labels": with_labels,
        "input_hashes": {},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="session")
def feature_dir(tmp_path_factory) -> Path:
    """Implicit-feedback feature version (has_labels false: every row is a positive)."""
    return build_feature_version(tmp_path_factory.mktemp("features"), with_labels=False)


@pytest.fixture(scope="session")
def labelled_feature_dir(tmp_path_factory) -> Path:
    """Feature version with shown-but-ignored rows (has_labels true)."""
    return build_feature_version(tmp_path_factory.mktemp("features"), with_labels=True)
