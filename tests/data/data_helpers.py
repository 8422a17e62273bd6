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
