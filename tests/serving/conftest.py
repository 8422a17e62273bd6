"""Fixtures for the serving tests: real exports, a real Triton, a real Redis online store.

``trained_run`` (session): tiny synthetic data through the real ingest, ETL and training (Merlin
interpreter, one epoch): a data version, a feature version and a run folder (docs/layouts.md 2-4).
``serving_settings`` (session): the shared stack's Redis + a Triton of our own, in a home of our own
(so it never meets the Triton other test modules start in the shared home), with the feature
version refreshed into the online store. Settings are passed explicitly; the process environment is
not changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from shared_helpers import merlin_cli

N_USERS, N_ITEMS, N_INTERACTIONS = 300, 200, 6000


_merlin = merlin_cli


@pytest.fixture(scope="session")
def serving_base(stack_settings, tmp_path_factory):
    """Settings of a home of our own that use the shared stack's Redis and MLflow, Triton on free ports."""
    from recsys.settings import replace
    from recsys.stack.service import free_port

    home = tmp_path_factory.mktemp("serving-home")
    return replace(
        stack_settings,
        home=home,
        triton_http_port=free_port(),
        triton_grpc_port=free_port(),
        triton_metrics_port=free_port(),
        # keep the online keys apart from other test modules using the same Redis
        online_key_prefix="serving-tests",
    )


@pytest.fixture(scope="session")
def trained_run(serving_base) -> dict:
    """Synthetic data -> data version -> feature version -> a short training run (real pipeline) whose
    two-tower beats the popularity baseline, so the champion gate promotes it."""
    s = serving_base
    source = s.home / "input"
    _merlin(s, "data", "generate", "--out", str(source), "--users", str(N_USERS), "--items", str(N_ITEMS),
            "--interactions", str(N_INTERACTIONS), "--seed", "3")
    _merlin(s, "data", "ingest", str(source))
    data_dir = next(p for p in s.data_root.iterdir() if not p.name.startswith("."))
    _merlin(s, "etl", "--data", str(data_dir))
    features_dir = next(p for p in s.features_root.iterdir() if not p.name.startswith("."))
    run_dir = s.runs_root / "run-1"
    _merlin(s, "train", "--features", str(features_dir), "--out", str(run_dir),
            "--epochs", "8", "--embedding-dim", "16", "--batch-size", "512",
               "--learning-rate", "0.005")  # enough to beat popularity on this tiny data
    return {
        "data_dir": data_dir,
        "features_dir": features_dir,
        "run_dir": run_dir,
        "manifest": json.loads((features_dir / "manifest.json").read_text()),
    }


@pytest.fixture(scope="session")
def serving_settings(serving_base, trained_run) -> Iterator:
    """Our Triton running (no model loaded yet) and the online store holding the trained feature version."""
    from recsys import stack
    from recsys.online.refresh import refresh_online_store

    s = serving_base
    refresh_online_store(str(trained_run["features_dir"]), str(trained_run["data_dir"]), settings=s)
    stack.up(s, only=["triton"])
    try:
        yield s
    finally:
        stack.down(s, only=["triton"])


@pytest.fixture(scope="session")
def store(serving_settings):
    from recsys.online.redis_store import RedisOnlineStore

    client = RedisOnlineStore.from_settings(serving_settings)
    yield client
    client.client.close()
