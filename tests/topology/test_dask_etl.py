"""The NVTabular ETL on the distributed topology's Dask cluster (``recsys stack up`` starts ``dask scheduler`` and
two ``dask worker`` processes) writes the same feature version as on local threads, and its work runs on the
cluster's workers."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pandas as pd
import pytest

from shared_helpers import merlin_cli

# What NVTabular's fit, transform and write of the ETL submit to the scheduler (task key prefixes).
ETL_TASKS = {"read-parquet", "categories", "transform", "write-processed"}

# Run in the Merlin runtime (the control plane has no `distributed`): per worker, how many tasks of each key
# prefix it ran (its transition log: executing -> memory). Counts, not names: the session's cluster is shared
# with the other topology tests, which may have run an ETL on it before.
_TASKS_RAN = """
import collections, json, sys
from dask.utils import key_split
from distributed import Client

def tasks_ran(dask_worker):
    return collections.Counter(key_split(entry[0]) for entry in dask_worker.state.log
                               if len(entry) > 2 and entry[1:3] == ("executing", "memory"))

with Client(sys.argv[1], timeout="30s") as client:
    names = {address: info["name"] for address, info in client.scheduler_info()["workers"].items()}
    print(json.dumps({names[address]: counts for address, counts in client.run(tasks_ran).items()}))
"""


def _sorted_frames(folder) -> pd.DataFrame:
    frame = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], ignore_index=True)
    return frame.sort_values(sorted(frame.columns)).reset_index(drop=True)


def _tasks_ran(settings) -> dict:
    env = settings.child_env()
    done = subprocess.run([str(settings.merlin_python), "-c", _TASKS_RAN, settings.dask_scheduler],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_etl_on_the_dask_cluster_equals_local_threads(topology, tmp_path):
    # the session's cluster, files in a home of this test's own (other topology tests ingest data too)
    s = dataclasses.replace(topology.up("dask"), home=tmp_path)
    assert s.dask_scheduler == f"tcp://{s.host}:{s.dask_scheduler_port}"
    source = s.home / "dask-etl-input"
    merlin_cli(s, "data", "generate", "--out", str(source), "--users", "300", "--items", "200",
               "--interactions", "6000", "--seed", "5")
    merlin_cli(s, "data", "ingest", str(source))
    data_dir = next(p for p in s.data_root.iterdir() if not p.name.startswith("."))

    local = dataclasses.replace(s, topology="embedded")  # no scheduler: local threads in the ETL's process
    assert local.dask_scheduler is None
    merlin_cli(local, "etl", "--data", str(data_dir), "--features-root", str(s.home / "features-local"))
    before = _tasks_ran(s)  # after the local run: had it used the cluster, the differences below would miss it
    merlin_cli(s, "etl", "--data", str(data_dir), "--features-root", str(s.home / "features-dask"))
    after = _tasks_ran(s)

    assert sorted(after) == ["dask-worker-1", "dask-worker-2"]
    ran = {worker: {prefix for prefix, count in counts.items() if count > before.get(worker, {}).get(prefix, 0)}
           for worker, counts in after.items()}
    # NVTabular's fit, transforms and writes ran on the workers, and both workers took part
    assert ETL_TASKS <= ran["dask-worker-1"] | ran["dask-worker-2"], ran
    assert all(ETL_TASKS & tasks for tasks in ran.values()), ran

    [on_threads] = (s.home / "features-local").iterdir()
    [on_cluster] = (s.home / "features-dask").iterdir()
    assert on_cluster.name == on_threads.name  # same data and ETL configuration: same feature version
    manifests = [json.loads((fv / "manifest.json").read_text()) for fv in (on_threads, on_cluster)]
    for key in ("rows", "columns", "cardinalities", "split", "schema", "has_labels", "input_hashes"):
        assert manifests[0][key] == manifests[1][key], key
    for part in ("train", "valid", "users", "items"):
        pd.testing.assert_frame_equal(_sorted_frames(on_cluster / part), _sorted_frames(on_threads / part),
                                      check_exact=False, rtol=1e-6)
    categories = sorted(p.relative_to(on_threads) for p in (on_threads / "workflows").rglob("categories/*.parquet"))
    assert categories and categories == sorted(
        p.relative_to(on_cluster) for p in (on_cluster / "workflows").rglob("categories/*.parquet"))
    for path in categories:  # the fitted vocabularies: same values in the same (frequency) order
        pd.testing.assert_frame_equal(pd.read_parquet(on_cluster / path), pd.read_parquet(on_threads / path))
    for id_map in ("users", "items"):
        pd.testing.assert_frame_equal(pd.read_parquet(on_cluster / "id_maps" / f"{id_map}.parquet"),
                                      pd.read_parquet(on_threads / "id_maps" / f"{id_map}.parquet"))
