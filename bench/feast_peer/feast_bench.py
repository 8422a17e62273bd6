"""The Feast side of bench/online_store.py: Feast 0.67 with its Redis online store, on the same data.

Runs in the Feast environment (``.envs/feast/bin/python``), started by bench/online_store.py as a
subprocess. It reads the same feature version the recsys refresh wrote (``users/``, ``items/`` and
``id_maps/``: transformed features keyed by raw id), creates a throw-away feature repository in a
temp dir, ``apply``s it, times ``materialize`` (every user and item row into Redis) and the read
the serving path does (``get_online_features`` for 1 user + 100 items), and prints one JSON object.

Usage: python bench/feast_peer/feast_bench.py --features DIR --redis HOST:PORT [--db 1] [--reads 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd


def _table(features: Path, name: str, id_column: str) -> pd.DataFrame:
    parts = sorted((features / name).glob("part_*.parquet"), key=lambda p: int(p.stem.split("_")[1]))
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    ids = pd.read_parquet(features / "id_maps" / f"{name}.parquet")[f"{id_column}_raw"].to_numpy()
    # Feast keys by the raw id; the encoded id stays a feature (the models need it)
    frame = frame.rename(columns={id_column: f"{id_column}_encoded"})
    frame.insert(0, id_column, ids.astype(np.int64))
    for column in frame.columns[1:]:
        if frame[column].dtype.kind in "iu":
            frame[column] = frame[column].astype(np.int64)
        else:
            frame[column] = frame[column].astype(np.float32)
    frame["event_timestamp"] = pd.Timestamp("2024-01-01", tz="UTC")
    return frame


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--redis", required=True, help="host:port")
    parser.add_argument("--db", type=int, default=1)
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--items-per-read", type=int, default=100)
    args = parser.parse_args()

    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Float32, Int64
    from feast.value_type import ValueType

    users = _table(args.features, "users", "user_id")
    items = _table(args.features, "items", "item_id")
    with tempfile.TemporaryDirectory(prefix="feast-peer-") as tmp:
        repo = Path(tmp)
        users.to_parquet(repo / "users.parquet", index=False)
        items.to_parquet(repo / "items.parquet", index=False)
        (repo / "feature_store.yaml").write_text(
            "project: recsys_bench\n"
            f"registry: {repo / 'registry.db'}\n"
            "provider: local\n"
            "online_store:\n"
            "  type: redis\n"
            f"  connection_string: \"{args.redis},db={args.db}\"\n"
            "offline_store:\n"
            "  type: file\n"
            "entity_key_serialization_version: 3\n"
        )
        store = FeatureStore(repo_path=str(repo))

        def view(name: str, frame: pd.DataFrame, entity: Entity) -> FeatureView:
            fields = [
                Field(name=c, dtype=Int64 if frame[c].dtype.kind == "i" else Float32)
                for c in frame.columns
                if c not in (entity.join_key, "event_timestamp")
            ]
            source = FileSource(path=str(repo / f"{name}.parquet"), timestamp_field="event_timestamp")
            return FeatureView(name=name, entities=[entity], schema=fields, source=source, ttl=timedelta(days=3650))

        user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
        item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)
        user_view, item_view = view("users", users, user), view("items", items, item)
        store.apply([user, item, user_view, item_view])

        started = time.perf_counter()
        store.materialize(datetime(2023, 12, 1, tzinfo=timezone.utc), datetime(2024, 1, 2, tzinfo=timezone.utc))
        materialize_seconds = time.perf_counter() - started
        rows = len(users) + len(items)

        feature_refs = [f"users:{f.name}" for f in user_view.features] + [f"items:{f.name}" for f in item_view.features]
        rng = np.random.default_rng(0)
        user_ids, item_ids = users.user_id.to_numpy(), items.item_id.to_numpy()
        latencies = []
        for n in range(args.reads + 50):
            uid = int(user_ids[rng.integers(len(user_ids))])
            chosen = rng.choice(item_ids, args.items_per_read, replace=False)
            entity_rows = [{"user_id": uid, "item_id": int(i)} for i in chosen]
            t0 = time.perf_counter()
            response = store.get_online_features(features=feature_refs, entity_rows=entity_rows).to_dict()
            if n >= 50:  # warm-up excluded
                latencies.append(time.perf_counter() - t0)
        assert len(response["item_id"]) == args.items_per_read
        missing = sum(v is None for v in response[item_view.features[0].name])
        ms = np.array(latencies) * 1000

    json.dump(
        {
            "feast_version": __import__("feast").__version__,
            "rows": rows,
            "materialize_seconds": round(materialize_seconds, 3),
            "materialize_rows_per_second": round(rows / materialize_seconds, 1),
            "read": {
                "what": f"get_online_features, 1 user + {args.items_per_read} items, {len(feature_refs)} features",
                "reads": len(latencies),
                "p50_ms": round(float(np.percentile(ms, 50)), 3),
                "p99_ms": round(float(np.percentile(ms, 99)), 3),
                "missing_values_in_last_read": int(missing),
            },
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
