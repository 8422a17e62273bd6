"""Fixtures for the ETL tests: small data version folders written by features_helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("nvtabular", reason="the ETL runs in the Merlin runtime")

from features_helpers import END, write_data_version  # noqa: E402,F401


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_data_version(tmp_path / "data" / "d0d0d0d0d0d0")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One ETL run shared by the read-only tests of a module: (data_dir, features_root, FeatureVersion)."""
    from recsys.features.etl import run_etl
    from recsys.features.split import ValidationSplit

    root = tmp_path_factory.mktemp("etl")
    data = write_data_version(root / "data" / "d0d0d0d0d0d0")
    features_root = root / "features"
    result = run_etl(data, features_root, split=ValidationSplit("time", 7), progress=lambda _m: None)
    return data, features_root, result
