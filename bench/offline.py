"""Offline pipeline benchmark: data generation, validation + ingest, NVTabular ETL against a pyarrow floor,
and training throughput of both models. Writes bench/results/offline.json.

Run in the Merlin runtime (it has NVTabular and TensorFlow):
    .envs/merlin/bin/python bench/offline.py [--interactions 10000000] [--train-interactions 1000000]

The ETL figure to drive down is ``etl.seconds / floor.seconds``: the floor is what pyarrow alone takes to
read the same input files and write an output of the same size as the ETL's, measured in the same run,
so machine noise cancels out of the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fn, *args, **kwargs):
    began = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - began


def pyarrow_floor(data_dir: Path, feature_dir: Path, scratch: Path) -> float:
    """Seconds for pyarrow to read the data version's tables and write the ETL's output tables again."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    outputs = {
        name: ds.dataset(sorted((feature_dir / name).glob("*.parquet")), format="parquet").to_table()
        for name in ("train", "valid", "users", "items")
    }
    began = time.perf_counter()
    for name in ("interactions", "users", "items"):
        pq.read_table(data_dir / f"{name}.parquet")
    for name, table in outputs.items():
        pq.write_table(table, scratch / f"{name}.parquet")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=500_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--train-interactions", type=int, default=1_000_000, help="size of the training benchmark")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--out", type=Path, default=RESULTS / "offline.json")
    args = parser.parse_args()

    from recsys.data.ingest import ingest
    from recsys.data.synthetic import SyntheticConfig, write_synthetic
    from recsys.features.etl import run_etl
    from recsys.features.split import ValidationSplit
    from recsys.training.pipeline import TrainParams, train_models

    scratch = Path(tempfile.mkdtemp(prefix="recsys-bench-offline-"))
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        # 1. generation
        config = SyntheticConfig(n_users=args.users, n_items=args.items, n_interactions=args.interactions, days=35, seed=1)
        rows, seconds = _timed(write_synthetic, scratch / "landing", config)
        result["generate"] = {"rows": rows, "seconds": round(seconds, 2), "rows_per_second": round(rows["interactions"] / seconds)}
        print(f"generate: {rows['interactions']:,} interactions in {seconds:.1f} s", flush=True)

        # 2. validation + data version
        data, seconds = _timed(ingest, scratch / "landing", scratch / "data")
        result["ingest"] = {"seconds": round(seconds, 2), "rows_per_second": round(rows["interactions"] / seconds)}
        print(f"ingest: {seconds:.1f} s", flush=True)

        # 3. ETL and its floor, in the same run
        fv, etl_seconds = _timed(run_etl, data.path, scratch / "features", ValidationSplit(days=7))
        floor_dir = scratch / "floor"
        floor_dir.mkdir()
        floor_seconds = pyarrow_floor(data.path, fv.path, floor_dir)
        result["etl"] = {
            "interactions": rows["interactions"],
            "seconds": round(etl_seconds, 2),
            "rows_per_second": round(rows["interactions"] / etl_seconds),
            "floor_seconds": round(floor_seconds, 2),
            "ratio_to_floor": round(etl_seconds / floor_seconds, 2),
            "output_rows": fv.manifest["rows"],
        }
        print(f"etl: {etl_seconds:.1f} s, pyarrow floor {floor_seconds:.1f} s, ratio {etl_seconds / floor_seconds:.1f}", flush=True)
        shutil.rmtree(scratch / "features")
        shutil.rmtree(floor_dir)

        # 4. training throughput on a smaller feature version (full-catalogue evaluation grows with users x items)
        small = SyntheticConfig(n_users=50_000, n_items=10_000, n_interactions=args.train_interactions, days=35, seed=2)
        write_synthetic(scratch / "landing-small", small)
        small_data = ingest(scratch / "landing-small", scratch / "data")
        small_fv = run_etl(small_data.path, scratch / "features", ValidationSplit(days=7))
        trained, seconds = _timed(train_models, small_fv.path, scratch / "run", TrainParams(epochs=args.epochs))
        result["training"] = {
            "interactions": args.train_interactions,
            "train_rows": small_fv.manifest["rows"]["train"],
            "epochs": args.epochs,
            "device": trained.device,
            "samples_per_second": {k: round(v) for k, v in trained.samples_per_second.items()},
            "seconds": {k: round(v, 1) for k, v in trained.seconds.items()},
            "metrics": {k: round(v, 4) for k, v in trained.metrics.items()},
        }
        print(f"training: {result['training']['samples_per_second']} samples/s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
