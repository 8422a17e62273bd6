"""Fixtures for the data tests (helpers live in data_helpers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from data_helpers import valid_tables, write_folder


@pytest.fixture(params=["parquet", "csv"])
def fmt(request) -> str:
    """Run a test once with parquet files and once with CSV files."""
    return request.param


@pytest.fixture
def make_input(tmp_path: Path, fmt: str) -> Callable[..., Path]:
    """make_input(mutate) -> folder holding the valid tables after ``mutate(tables)``."""

    def make(mutate: Callable[[dict[str, pd.DataFrame]], None] | None = None, name: str = "input") -> Path:
        tables = valid_tables()
        if mutate is not None:
            mutate(tables)
        return write_folder(tmp_path / name, tables, fmt)

    return make
