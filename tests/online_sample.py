"""A data version and a feature version in the project's layouts, with random values, written fast.

Test-fixture code, not shipped in the package: for the online store's tests, the DAG tests and
bench/online_store.py. The online store only reads ``users/``, ``items/``, ``id_maps/`` and the
manifests of a feature version, plus the data
version's ``interactions.parquet`` and ``items.parquet``, so those are what this writes (docs/layouts.md
sections 2 and 3; no train/valid splits, no NVTabular workflows). Building 100k users this way takes
a second, where the real ETL would take minutes. The real ETL's output is covered by a contract test.
"""

from __future__ import annotations

from pathlib import Path

from recsys.data.versioning import atomic_directory, content_hash, utc_now_iso, write_json_atomic

USER_CATEGORICAL = ("age_bucket", "gender", "region")
USER_CONTINUOUS = ("activity",)
ITEM_CATEGORICAL = ("category", "brand", "price_band")
ITEM_CONTINUOUS = ("item_age_days",)


def write_sample_versions(
    home: Path,
    n_users: int = 200,
    n_items: int = 50,
    n_interactions: int = 2_000,
    seed: int = 0,
    string_ids: bool = False,
) -> Path:
    """Write ``<home>/data/<dv>/`` and ``<home>/features/<fv>/``; return the feature version folder.

    Raw user ids start at 1000, raw item ids at 5000; with ``string_ids`` they are text
    (``u-3e8``..., ``SKU-5000``...). The same arguments give the same versions (an existing version
    is left as it is).
    """
    import numpy as np
    import pandas as pd

    from recsys.data import ids

    home = Path(home)
    rng = np.random.default_rng(seed)
    user_raw = np.arange(1000, 1000 + n_users, dtype=np.int64)
    item_raw = np.arange(5000, 5000 + n_items, dtype=np.int64)
    if string_ids:
        user_raw = ids.as_array([f"u-{n:x}" for n in user_raw.tolist()], ids.STRING)
        item_raw = ids.as_array([f"SKU-{n}" for n in item_raw.tolist()], ids.STRING)
    kinds = ids.IdKinds(*([ids.STRING] * 2 if string_ids else [ids.INT] * 2))
    categories = rng.integers(0, 12, n_items)
    raw_items = pd.DataFrame(
        {
            "item_id": item_raw,
            "category": [f"cat_{c:02d}" for c in categories],
            "brand": [f"brand_{c:02d}_{b}" for c, b in zip(categories, rng.integers(0, 5, n_items))],
            "price_band": rng.choice(["budget", "mid", "premium"], n_items),
            "item_age_days": rng.uniform(0, 400, n_items).round(1),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": user_raw,
            "age_bucket": rng.choice(["18-24", "25-34", "35-54", "55+"], n_users),
            "gender": rng.choice(["f", "m", "x"], n_users),
            "region": rng.choice(["north", "south", "east", "west"], n_users),
            "activity": rng.exponential(1.0, n_users),
        }
    )
    # skewed popularity, so the popularity list has a clear order
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.9
    interactions = pd.DataFrame(
        {
            "user_id": rng.choice(user_raw, n_interactions),
            "item_id": rng.choice(item_raw, n_interactions, p=weights / weights.sum()),
            "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 28 * 86400, n_interactions), unit="s"),
            "label": (rng.random(n_interactions) < 0.6).astype(np.int8),
        }
    ).drop_duplicates(["user_id", "item_id", "timestamp"], ignore_index=True)

    data_version = content_hash("online-sample", n_users, n_items, n_interactions, seed, *(["string"] if string_ids else []))
    data_dir = home / "data" / data_version
    if not data_dir.exists():
        with atomic_directory(data_dir) as tmp:
            interactions.to_parquet(tmp / "interactions.parquet", index=False)
            users.to_parquet(tmp / "users.parquet", index=False)
            raw_items.to_parquet(tmp / "items.parquet", index=False)
            write_json_atomic(
                tmp / "manifest.json",
                {
                    "data_version": data_version,
                    "created_at": utc_now_iso(),
                    "source": "tests/online_sample.py",
                    "rows": {"interactions": len(interactions), "users": n_users, "items": n_items},
                    "has_labels": True,
                    "ids": kinds.to_dict(),
                },
            )

    feature_version = content_hash("feature-version", data_version, {"sample": True})
    features_dir = home / "features" / feature_version
    if features_dir.exists():
        return features_dir

    def encode(values: "pd.Series") -> "np.ndarray":
        # 0 padding, 1 null, 2 out-of-vocabulary, then 3, 4, ... by frequency (as NVTabular Categorify)
        order = values.value_counts().index
        return values.map({v: i + 3 for i, v in enumerate(order)}).to_numpy(np.int64)

    def normalize(values: "pd.Series") -> "np.ndarray":
        return ((values - values.mean()) / values.std()).to_numpy(np.float32)

    users_out = pd.DataFrame({"user_id": encode(users["user_id"])})
    for column in USER_CATEGORICAL:
        users_out[column] = encode(users[column])
    for column in USER_CONTINUOUS:
        users_out[column] = normalize(users[column])
    items_out = pd.DataFrame({"item_id": encode(raw_items["item_id"])})
    for column in ITEM_CATEGORICAL:
        items_out[column] = encode(raw_items[column])
    for column in ITEM_CONTINUOUS:
        items_out[column] = normalize(raw_items[column])

    with atomic_directory(features_dir) as tmp:
        for name, frame in (("users", users_out), ("items", items_out)):
            (tmp / name).mkdir()
            frame.to_parquet(tmp / name / "part_0.parquet", index=False)
        (tmp / "id_maps").mkdir()
        pd.DataFrame({"user_id_raw": user_raw, "user_id": users_out["user_id"]}).to_parquet(
            tmp / "id_maps" / "users.parquet", index=False
        )
        pd.DataFrame({"item_id_raw": item_raw, "item_id": items_out["item_id"]}).to_parquet(
            tmp / "id_maps" / "items.parquet", index=False
        )
        write_json_atomic(
            tmp / "manifest.json",
            {
                "feature_version": feature_version,
                "data_version": data_version,
                "created_at": utc_now_iso(),
                "rows": {"users": n_users, "items": n_items},
                "columns": {
                    "user_id": "user_id",
                    "item_id": "item_id",
                    "user_categorical": list(USER_CATEGORICAL),
                    "user_continuous": list(USER_CONTINUOUS),
                    "item_categorical": list(ITEM_CATEGORICAL),
                    "item_continuous": list(ITEM_CONTINUOUS),
                },
                "has_labels": True,
                "ids": kinds.to_dict(),
            },
        )
    return features_dir
