"""Fixtures for the serving tests: real exports, a real Triton, a real Redis online store.

``trained_run`` (session): tiny synthetic data through the real ingest, ETL and training (Merlin
interpreter, one epoch): a data version, a feature version and a run folder (docs/layouts.md 2-4).
``serving_settings`` (session): the shared stack's Redis + a Triton of our own, in a home of our own
(so it never meets the Triton other test modules start in the shared home), with the feature
version refreshed into the online store. ``served`` (session): version 1 of every published model
of the trained run written into that Triton's repository and loaded (the floor model too);
``client``: a :class:`~recsys.serving.client.RecommendClient` of it. Settings are passed explicitly;
the process environment is not changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from shared_helpers import merlin_trained_run, running_triton, triton_ports


@pytest.fixture(scope="session")
def serving_base(stack_settings, tmp_path_factory):
    """Settings of a home of our own that use the shared stack's Redis and MLflow, Triton on free ports."""
    from recsys.settings import replace

    home = tmp_path_factory.mktemp("serving-home")
    return replace(
        stack_settings,
        home=home,
        **triton_ports(),
        # keep the online keys apart from other test modules using the same Redis
        online_key_prefix="serving-tests",
    )


@pytest.fixture(scope="session")
def trained_run(serving_base) -> dict:
    """Synthetic data -> data version -> feature version -> a short training run (real pipeline) whose
    two-tower beats the popularity baseline, so the champion gate promotes it."""
    from recsys.serving.index import prior_slot_of

    trained = merlin_trained_run(serving_base, "run-1")
    metrics = json.loads((trained["run_dir"] / "metrics.json").read_text())["metrics"]
    # prior_slot: the exported item vectors end with the popularity prior (what publishing records)
    return {**trained, "manifest": json.loads((trained["features_dir"] / "manifest.json").read_text()),
            "prior_slot": prior_slot_of(metrics)}


@pytest.fixture(scope="session")
def serving_settings(serving_base, trained_run) -> Iterator:
    """Our Triton running (no model loaded yet) and the online store holding the trained feature version."""
    from recsys.online.refresh import refresh_online_store

    s = serving_base
    refresh_online_store(str(trained_run["features_dir"]), str(trained_run["data_dir"]), settings=s)
    with running_triton(s):
        yield s


@pytest.fixture(scope="session")
def store(serving_settings):
    from recsys.online.redis_store import RedisOnlineStore

    client = RedisOnlineStore.from_settings(serving_settings)
    yield client
    client.client.close()


@pytest.fixture(scope="session")
def served(serving_settings, trained_run):
    """Version 1 of every published model written and loaded; the floor model too."""
    from recsys.serving import control, repository

    s = serving_settings
    repo = s.triton_repo
    pipeline = repository.pipeline_from_settings(s, trained_run["manifest"])
    written = repository.write_model_versions(
        repository.exports_from_run(trained_run["run_dir"]), repo, 1, pipeline, lineage={"source": "tests/serving"},
        prior_slot=trained_run["prior_slot"],
    )
    repository.write_floor_model(repo)
    for model in ("recsys_floor", *repository.PUBLISHED_MODELS):
        control.load_model(s, model)
    return {"settings": s, "written": written, "pipeline": pipeline}


@pytest.fixture(scope="session")
def client(served):
    from recsys.serving.client import RecommendClient

    with RecommendClient(served["settings"], "grpc") as c:
        yield c
