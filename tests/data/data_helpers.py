"""Helpers for the data tests: a tiny valid input folder, written as parquet or CSV.

(A module with its own name: several test folders have a conftest.py, so `import conftest` is ambiguous.)
"""

from __future__ import annotations

from pathlib import Path
import pandas as pd


def valid_tables() -> dict[str, pd.DataFrame]:
    """Three small tables that satisfy the contract."""
    return {
        "interactions": pd.DataFrame(
            {
                "user_id": [0, 1, 2, 0],
                "item_id": [0, 1, 2, 1],
                "timestamp": pd.to_datetime(
                    ["2024-01-01 10:00:00", "2024-01-02 11:00:00", "2024-01-03 12:00:00", "2024-01-04 13:00:00"]
                ),
                "event_type": ["click", "impression", "purchase", "click"],
                "label": [1, 0, 1, 1],
            }
        ),
        "users": pd.DataFrame({"user_id": [0, 1, 2], "age_bucket": ["18-24", "25-34", "55+"]}),
        "items": pd.DataFrame(
            {"item_id": [0, 1, 2], "category": ["a", "b", "c"], "price": [1.5, 2.0, 9.99]}
        ),
    }


def write_table(folder: Path, name: str, frame: pd.DataFrame, fmt: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def write_folder(folder: Path, tables: dict[str, pd.DataFrame], fmt: str) -> Path:
    for name, frame in tables.items():
        write_table(folder, name, frame, fmt)
    return folder


def write_live_part(folder: Path, events: pd.DataFrame, stream_first: str, stream_last: str) -> Path:
    """Write ``events`` into ``folder/interactions/`` as the landing consumer does (docs/layouts.md,
    section 1): the contract's columns and types, its name and metadata, a hidden temp file renamed into place."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.data.contract import LIVE_PART_COLUMNS, live_part_metadata, live_part_name

    frame = events.assign(**({} if "request_id" in events else {"request_id": None}))[list(LIVE_PART_COLUMNS)]
    ids = {c: pa.string() if frame[c].dtype == object else pa.int64() for c in ("user_id", "item_id")}
    schema = pa.schema(
        [("user_id", ids["user_id"]), ("item_id", ids["item_id"]), ("timestamp", pa.timestamp("ms")),
         ("event_type", pa.string()), ("request_id", pa.string())]
    )
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), **live_part_metadata(stream_first, stream_last, len(frame))}
    )
    parts = folder / "interactions"
    parts.mkdir(parents=True, exist_ok=True)
    path = parts / live_part_name(stream_first, len(frame))
    temp = parts / f".{path.name}.tmp"
    pq.write_table(table, temp)
    os.replace(temp, path)
    return path


def live_events(user_ids: list, item_ids: list, hours: list, event_types: list, request_ids: list | None = None) -> pd.DataFrame:
    """Live events on 2024-01-05 (after valid_tables' interactions), ``hours`` after midnight."""
    return pd.DataFrame(
        {
            "user_id": user_ids,
            "item_id": item_ids,
            "timestamp": pd.Timestamp("2024-01-05") + pd.to_timedelta(hours, unit="h"),
            "event_type": event_types,
            "request_id": request_ids if request_ids is not None else [None] * len(user_ids),
        }
    )
