"""Dask ETL benchmark (not a test): the NVTabular ETL of MovieLens ml-latest-small on the distributed topology's
Dask cluster (``dask scheduler`` + ``settings.dask_workers`` ``dask worker`` processes, started by the stack)
beside the same ETL on local threads, in the same run. Writes bench/results/dask_etl.json.

    .envs/control/bin/python bench/dask_etl.py [--data ../shared/data/ml-latest-small] [--repeats 3]
    .envs/control/bin/python bench/dask_etl.py --synthetic 1000000   # `recsys data generate` data instead

Both modes run ``recsys.features.etl.run_etl`` in one Merlin-runtime process, alternating (local, cluster) per
repeat, each into a fresh features folder; the first repeat is reported apart (the workers import NVTabular
on their first task). The figure is ``ratio_cluster_to_local``: the median cluster time over the median
local time. On one machine the cluster cannot beat threads on data this small (every partition crosses a
socket, and the workers share the same cores); the benchmark shows what the move to a cluster costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONTROL_BIN, RESULTS, ROOT, loadavg, log, merlin, scratch_stack  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-latest-small"

_RUNS = """
import json, sys, time
from pathlib import Path
from recsys.features.etl import run_etl
from recsys.features.split import ValidationSplit
from recsys.settings import get_settings

data, scratch, repeats, address = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
split = ValidationSplit.from_settings(get_settings())
seconds = {"local": [], "cluster": []}
for repeat in range(repeats):
    for mode, scheduler in (("local", None), ("cluster", address)):
        began = time.perf_counter()
        fv = run_etl(data, scratch / f"features-{mode}-{repeat}", split, dask_scheduler_address=scheduler,
                     progress=lambda message: print(message, file=sys.stderr, flush=True))
        seconds[mode].append(round(time.perf_counter() - began, 2))
        print(f"{mode} #{repeat + 1}: {seconds[mode][-1]} s", file=sys.stderr, flush=True)
print("BENCH-RESULT " + json.dumps({"seconds": seconds, "rows": fv.manifest["rows"], "feature_version": fv.version}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens ml-latest-small folder")
    parser.add_argument("--repeats", type=int, default=3, help="ETL runs per mode (the first is reported apart)")
    parser.add_argument("--synthetic", type=int, default=0, metavar="INTERACTIONS",
                        help="run on `recsys data generate` data of this many interactions instead of MovieLens")
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    repeats = 2 if args.quick else max(2, args.repeats)
    name = "dask_etl" + (f"-synthetic-{args.synthetic}" if args.synthetic else "") + ("-quick" if args.quick else "")
    out = args.out or RESULTS / f"{name}.json"
    if not args.synthetic and not (args.data / "ratings.csv").exists():
        raise SystemExit(f"error: {args.data} holds no ratings.csv: point --data at MovieLens ml-latest-small")

    from recsys import stack
    from recsys.stack.service import free_port

    scratch = Path(tempfile.mkdtemp(prefix="recsys-bench-dask-"))
    settings = scratch_stack(scratch / "home", extra_env={"RECSYS_TOPOLOGY": "distributed",
                                                          "RECSYS_DASK_SCHEDULER_PORT": str(free_port())})
    try:
        source = (["generate", "--interactions", str(args.synthetic), "--users", str(max(1000, args.synthetic // 50)),
                   "--items", str(max(500, args.synthetic // 200))] if args.synthetic else ["import-movielens", str(args.data)])
        for command in ([*source, "--out", str(scratch / "input")], ["ingest", str(scratch / "input")]):
            subprocess.run([str(CONTROL_BIN / "recsys"), "data", *command], check=True, stdout=subprocess.DEVNULL)
        data_dir = next(p for p in settings.data_root.iterdir() if not p.name.startswith("."))
        log(f"data version {data_dir.name}; starting the Dask cluster ({settings.dask_workers} workers x "
            f"{settings.dask_worker_threads} thread(s), {settings.dask_worker_memory} each)")
        began = time.perf_counter()
        stack.up(settings, only=["dask"])
        cluster_start = round(time.perf_counter() - began, 1)
        load_before = loadavg()
        runs = merlin(_RUNS, str(data_dir), str(scratch), str(repeats), settings.dask_scheduler,
                      env=settings.child_env())
        load_after = loadavg()
    finally:
        stack.down(settings, only=["dask"])
        shutil.rmtree(scratch, ignore_errors=True)

    seconds = runs["seconds"]
    warm = {mode: round(statistics.median(times[1:]), 2) for mode, times in seconds.items()}
    result = {
        "benchmark": "dask_etl",
        "data": f"synthetic, {args.synthetic} interactions" if args.synthetic else f"MovieLens {args.data.name}",
        "rows": runs["rows"],
        "cluster": {"workers": settings.dask_workers, "threads_per_worker": settings.dask_worker_threads,
                    "memory_per_worker": settings.dask_worker_memory, "start_seconds": cluster_start},
        "repeats": repeats,
        "seconds": seconds,
        "first_run_seconds": {mode: times[0] for mode, times in seconds.items()},
        "median_seconds_after_first": warm,
        "ratio_cluster_to_local": round(warm["cluster"] / warm["local"], 2),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"local {warm['local']} s, cluster {warm['cluster']} s (median after the first), ratio "
        f"{result['ratio_cluster_to_local']}; load {load_before} -> {load_after}; wrote {out}")


if __name__ == "__main__":
    main()
