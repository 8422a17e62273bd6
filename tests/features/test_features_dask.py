"""The ETL on a real 2-worker Dask cluster gives the same feature version as the single-process run."""

from __future__ import annotations

import pandas as pd
import pytest
from merlin.io import Dataset

from recsys.features.etl import run_etl
from recsys.features.split import ValidationSplit

# merlin.io warns on every CPU Dataset; CPU is this project's normal case.
pytestmark = pytest.mark.filterwarnings("ignore:Initializing an NVTabular Dataset in CPU mode:UserWarning")


def _read_sorted(path) -> pd.DataFrame:
    frame = Dataset(path, engine="parquet", cpu=True).to_ddf().compute()
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


@pytest.mark.slow
def test_dask_cluster_run_equals_single_process_run(built, tmp_path):
    import dask
    from distributed import LocalCluster

    data, _, local = built
    messages: list[str] = []
    # Forked workers inherit the already imported NVTabular/TensorFlow (spawned ones re-import
    # them: ~15 s each on this machine).
    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        on_cluster = run_etl(
            data, tmp_path / "features", split=ValidationSplit("time", 7), dask_scheduler_address=cluster.scheduler_address,
            progress=messages.append,
        )
        ran_on_cluster = set(cluster.scheduler.task_prefixes)
    # the fit (Categorify vocabularies, Normalize moments), transforms and writes ran on the workers
    assert {"read-parquet", "categories", "chunkwise-moments", "transform", "write-processed"} <= ran_on_cluster
    assert cluster.scheduler_address in messages[0]
    assert on_cluster.version == local.version
    for key in ("rows", "columns", "cardinalities", "split", "schema", "has_labels", "input_hashes"):
        assert on_cluster.manifest[key] == local.manifest[key], key
    for part in ("train", "valid", "users", "items"):
        pd.testing.assert_frame_equal(
            _read_sorted(on_cluster.path / part), _read_sorted(local.path / part), check_exact=False, rtol=1e-6
        )
        assert Dataset(on_cluster.path / part, engine="parquet", cpu=True).schema == Dataset(
            local.path / part, engine="parquet", cpu=True
        ).schema
    for id_map in ("users.parquet", "items.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(on_cluster.path / "id_maps" / id_map), pd.read_parquet(local.path / "id_maps" / id_map)
        )
