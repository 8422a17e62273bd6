"""Serving benchmark (not a test): the four-stage ``recsys`` Triton model under perf_analyzer.

Writes bench/results/serving.json. One run:

1. per catalogue size (default 10k and 100k items, 100k users): synthetic data -> ingest -> ETL ->
   one-epoch training, through the project's real CLI in the Merlin runtime (real merlin-models
   SavedModels and a real FAISS index). Built once into ``--work`` and reused by later runs;
2. a local stack of our own (embedded Redis + Triton, own home, free ports);
3. per catalogue: refresh the online store with its feature version; perf_analyzer (gRPC, batch 1,
   count windows) at concurrency 1 and 16 on the trivial ``recsys_floor`` model (the floor), then,
   per mode, a new version of the published models written and loaded and the same measurements on
   ``recsys``: ``batched`` (Triton's dynamic batching, the model answers every queued request in one
   pass) and ``unbatched`` (one request per model call). Inputs: random known user ids plus ~5%
   unknown ones (cold start). No response cache.

Reported per (catalogue, mode, concurrency): p50, p99, throughput, and ``p50 / floor p50``; the load
average before and after each measurement (the machine is shared: tail latencies move with it).

Run from the repository root with the control-plane interpreter:

    .envs/control/bin/python bench/serving.py                      # both catalogues (~15 min first time)
    .envs/control/bin/python bench/serving.py --items 10000 --quick --modes batched  # a quick look

``--replicas``: two Triton replicas (the distributed topology's) beside one, same run, same published version
(loaded on both by the publishing code's ``control.load_model``): per total concurrency C, perf_analyzer at C
against replica 1 alone, then two perf_analyzers at C/2 at once, one per replica (what clients spreading their
requests round-robin offer), both in time windows started together, ``--rounds`` times in turn. Throughputs are
summed; the median over the rounds of the ratio ``two / one`` is the figure. Writes
bench/results/serving_replicas(-quick).json:

    .envs/control/bin/python bench/serving.py --replicas --items 10000 --quick --concurrency 16

``perf_analyzer`` (in the tritonclient wheel of the control env) needs ``libb64.so.0d`` and
``libcudart.so.12``; the nvidia-pytriton wheel in the Merlin runtime bundles both (under renamed
files), so they are symlinked into a temporary folder on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MERLIN_PYTHON, RESULTS, ROOT, loadavg, log  # noqa: E402,F401  (events.py imports loadavg, log from here)

PERF_ANALYZER = ROOT / ".envs" / "control" / "bin" / "perf_analyzer"
UNKNOWN_USER_SHARE = 0.05


# --- 1. catalogues ------------------------------------------------------------------------------
def build_catalogue(work: Path, items: int, users: int, interactions: int, embedding_dim: int) -> dict:
    """Data version, feature version and a one-epoch training run for ``items`` items (reused when built)."""
    home = work / f"catalogue-{items}"
    done = home / "built.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {**os.environ, "RECSYS_HOME": str(home)}

    def recsys(*argv: str) -> None:
        began = time.perf_counter()
        run = subprocess.run([str(MERLIN_PYTHON), "-m", "recsys.cli", *argv], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"recsys {' '.join(argv)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
        log(f"  recsys {argv[0]} {argv[1] if len(argv) > 1 and not argv[1].startswith('-') else ''} "
            f"({time.perf_counter() - began:.0f} s)")

    log(f"building the {items:,}-item catalogue ({users:,} users, {interactions:,} interactions) in {home}")
    source = home / "input"
    recsys("data", "generate", "--out", str(source), "--users", str(users), "--items", str(items),
           "--interactions", str(interactions), "--seed", "7")
    recsys("data", "ingest", str(source))
    data_dir = next(p for p in (home / "data").iterdir() if not p.name.startswith("."))
    recsys("etl", "--data", str(data_dir))
    features_dir = next(p for p in (home / "features").iterdir() if not p.name.startswith("."))
    run_dir = home / "runs" / "bench"
    recsys("train", "--features", str(features_dir), "--out", str(run_dir), "--epochs", "1",
           "--embedding-dim", str(embedding_dim), "--batch-size", "4096")
    built = {"items": items, "users": users, "interactions": interactions, "data_dir": str(data_dir),
             "features_dir": str(features_dir), "run_dir": str(run_dir)}
    done.write_text(json.dumps(built, indent=2))
    return built


def prior_slot(built: dict) -> bool:
    """Whether the catalogue's training run exported vectors with the popularity prior slot (its metrics.json)."""
    from recsys.layout import RunExports
    from recsys.serving.index import prior_slot_of

    return prior_slot_of(json.loads(RunExports(Path(built["run_dir"])).metrics.read_text()).get("metrics", {}))


# --- 2. perf_analyzer ----------------------------------------------------------------------------
def perf_analyzer_env(scratch: Path) -> dict:
    """Environment for perf_analyzer: a folder on LD_LIBRARY_PATH with the two libraries it needs."""
    if not PERF_ANALYZER.exists():
        raise SystemExit(f"{PERF_ANALYZER} not found: the tritonclient wheel of the control env ships it")
    wanted = {"libb64.so.0d": "libb64*.so.0d*", "libcudart.so.12": "libcudart*.so.12*"}
    search = [p for p in (ROOT / ".envs").glob("*/lib/python3*/site-packages/*.libs") if p.is_dir()]
    search += [Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib")]
    libs = scratch / "perf-analyzer-libs"
    libs.mkdir(parents=True, exist_ok=True)
    for name, pattern in wanted.items():
        found = next((f for folder in search for f in sorted(folder.glob(pattern))), None)
        if found is None:
            raise SystemExit(
                f"perf_analyzer needs {name}; looked for {pattern} in {[str(p) for p in search]}. The nvidia-pytriton "
                "wheel of the Merlin runtime bundles both (rebuild .envs/merlin), or install Debian's libb64-0d and "
                "the nvidia-cuda-runtime-cu12 wheel"
            )
        link = libs / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(found)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def input_data(path: Path, user_ids, n: int, seed: int) -> Path:
    """perf_analyzer's --input-data file: random known users, ~5% unknown ones (cold start).

    ``user_id`` is a BYTES tensor (the raw id's text, for int and text ids alike: recsys.data.ids),
    given as JSON strings; ``recsys_floor`` takes the same tensor, so both get the same requests.
    """
    from recsys.data import ids

    rng = random.Random(seed)
    known = [ids.to_text(u) for u in ids.as_python(user_ids)]
    rows = []
    for _ in range(n):
        user = rng.choice(known) if rng.random() >= UNKNOWN_USER_SHARE else str(-rng.randint(1, 10**9))
        rows.append({"user_id": [user]})
    path.write_text(json.dumps({"data": rows}))
    return path


def perf_analyzer(env: dict, grpc_url: str, model: str, concurrency: int, data: Path, requests: int, out: Path,
                  window_ms: Optional[int] = None) -> dict:
    """One perf_analyzer measurement (gRPC, batch 1, count windows); p50/p99 in ms, throughput in infer/s.

    ``window_ms``: three time windows of that length instead, taken whatever their spread (``stable`` then
    says nothing): runs started together then measure the same seconds (--replicas)."""
    def run(stability: int) -> subprocess.CompletedProcess:
        windows = (["--measurement-mode", "count_windows", "--measurement-request-count", str(requests)] if window_ms is None
                   else ["--measurement-mode", "time_windows", "--measurement-interval", str(window_ms)])
        command = [
            str(PERF_ANALYZER), "-m", model, "-i", "grpc", "-u", grpc_url, "-b", "1",
            "--concurrency-range", str(concurrency), "--input-data", str(data), *windows,
            "--percentile", "99", "--max-trials", "8", "--stability-percentage", str(stability), "-f", str(out),
        ]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)

    # Stable: three consecutive windows within 25% of each other. On a machine others load too that
    # may never happen; then the figures of the last windows are taken anyway and marked unstable.
    done = run(25 if window_ms is None else 10_000)
    stable = done.returncode == 0 and window_ms is None
    if done.returncode != 0:
        done = run(10_000)
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"perf_analyzer failed ({model}, c={concurrency}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    with out.open() as f:
        row = next(csv.DictReader(f))
    us = lambda key: float(row[key]) / 1000.0  # noqa: E731 - microseconds -> ms
    result = {
        "concurrency": concurrency,
        "throughput_per_s": round(float(row["Inferences/Second"]), 1),
        "p50_ms": round(us("p50 latency"), 3),
        "p90_ms": round(us("p90 latency"), 3),
        "p99_ms": round(us("p99 latency"), 3),
        "server_queue_ms": round(us("Server Queue"), 3),
        "server_compute_ms": round(us("Server Compute Input") + us("Server Compute Infer") + us("Server Compute Output"), 3),
        "stable": stable,
    }
    log(f"  {model:13s} c={concurrency:<3d} {result['throughput_per_s']:8.1f} infer/s  p50 {result['p50_ms']:7.2f} ms  "
        f"p99 {result['p99_ms']:7.2f} ms")
    return result


def compare_replicas(env: dict, s, concurrency: int, data: Path, scratch: Path, window_ms: int, rounds: int) -> dict:
    """``rounds`` times in turn: replica 1 alone at ``concurrency``, then every replica at once with
    ``concurrency`` split between them (one perf_analyzer each, started together, time windows of ``window_ms``:
    they measure the same seconds). Medians over the rounds: the machine is shared, one round says little."""
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    from recsys.serving import repository
    from recsys.serving.triton_client import endpoints

    replicas = endpoints(s)
    shares = [concurrency // len(replicas) + (1 if n < concurrency % len(replicas) else 0) for n in range(len(replicas))]
    measured = []
    for r in range(rounds):
        before = loadavg()
        one = perf_analyzer(env, replicas[0].grpc, repository.FOUR_STAGE, concurrency, data, 0,
                            scratch / f"pa-one-{concurrency}-{r}.csv", window_ms)
        one.update(load_average_before=before, load_average_after=loadavg())
        before = loadavg()
        with ThreadPoolExecutor(len(replicas)) as pool:
            runs = list(pool.map(lambda n: perf_analyzer(env, replicas[n].grpc, repository.FOUR_STAGE, shares[n], data,
                                                         0, scratch / f"pa-replica{n + 1}-{concurrency}-{r}.csv",
                                                         window_ms),
                                 range(len(replicas))))
        total = round(sum(run["throughput_per_s"] for run in runs), 1)
        measured.append({"one_replica": one, "two_replicas": {"per_replica": runs, "throughput_per_s": total,
                                                              "load_average_before": before,
                                                              "load_average_after": loadavg()},
                         "two_over_one_throughput": round(total / one["throughput_per_s"], 2)})
        log(f"  round {r + 1}: {len(replicas)} replicas c={concurrency} ({'+'.join(map(str, shares))}) {total} infer/s "
            f"in all, {measured[-1]['two_over_one_throughput']}x one replica's {one['throughput_per_s']}")
    median = lambda values: round(statistics.median(values), 2)  # noqa: E731
    return {"window_ms": window_ms, "rounds": measured,
            "one_replica_median_throughput_per_s": median([m["one_replica"]["throughput_per_s"] for m in measured]),
            "two_replicas_median_throughput_per_s": median([m["two_replicas"]["throughput_per_s"] for m in measured]),
            "two_over_one_median": median([m["two_over_one_throughput"] for m in measured])}


# --- 3. the run ---------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="10000,100000", help="catalogue sizes, comma separated")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=400_000)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--requests", type=int, default=3000, help="requests per count window")
    parser.add_argument("--quick", action="store_true", help="shorter windows (600 requests)")
    parser.add_argument("--instances", type=int, default=None, help="Triton instances of recsys (default: settings)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-serving",
                        help="built catalogues are kept here and reused")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--batch-delay-us", type=int, default=0,
                        help="dynamic batching's max queue delay (settings.triton_batch_delay_us; default 0)")
    parser.add_argument("--modes", default="batched,unbatched",
                        help="batched (dynamic batching, --batch-delay-us) and/or unbatched (one request per call)")
    parser.add_argument("--replicas", action="store_true",
                        help="two Triton replicas beside one (batched mode only); writes serving_replicas(-quick).json")
    parser.add_argument("--rounds", type=int, default=3, help="--replicas: one/two measurements in turn, this many times")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/serving.json")
    args = parser.parse_args()
    if args.out is None:
        args.out = RESULTS / (f"serving_replicas{'-quick' if args.quick else ''}.json" if args.replicas else "serving.json")
    requests = 600 if args.quick else args.requests
    delays = {"batched": args.batch_delay_us, "unbatched": None}
    modes = [(m, delays[m]) for m in args.modes.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    catalogues = [build_catalogue(args.work, int(n), args.users, args.interactions, args.embedding_dim)
                  for n in args.items.split(",")]
    if args.build_only:
        return

    import pandas as pd

    from recsys import stack
    from recsys.online.refresh import refresh_online_store
    from recsys.serving import control, repository
    from recsys.settings import load_settings, replace
    from recsys.stack.service import free_port, free_port_block

    scratch = Path(tempfile.mkdtemp(prefix="recsys-bench-serving-"))
    env = perf_analyzer_env(scratch)
    base = load_settings()
    triton_ports = free_port_block(6)  # replica n: + 3n
    s = replace(
        base, home=scratch / "home", redis_url=None, triton_url=None, redis_port=free_port(),
        triton_http_port=triton_ports, triton_grpc_port=triton_ports + 1, triton_metrics_port=triton_ports + 2,
        triton_replicas=2 if args.replicas else 1, online_key_prefix="bench",
        **({"triton_instances": args.instances} if args.instances else {}),
    )
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": loadavg(),
        "settings": {"candidates_k": s.candidates_k, "instances": s.triton_instances, "k": s.recommend_default_k,
                     "embedding_dim": args.embedding_dim, "requests_per_window": requests,
                     "unknown_user_share": UNKNOWN_USER_SHARE},
        "catalogues": [],
    }
    if args.replicas:
        result["settings"]["replicas"] = s.triton_replica_count
        modes = [("batched", args.batch_delay_us)]
    log(f"stack in {s.home} (Redis :{s.redis_port}, Triton gRPC :{s.triton_grpc_port}), load {loadavg()}")
    stack.up(s, only=["redis", "triton"])
    try:
        repository.write_floor_model(s.triton_repo)
        control.load_model(s, repository.FLOOR)
        version = 0
        for built in catalogues:
            log(f"catalogue of {built['items']:,} items: online refresh")
            refresh = refresh_online_store(built["features_dir"], built["data_dir"], settings=s)
            manifest = json.loads((Path(built["features_dir"]) / "manifest.json").read_text())
            users = pd.read_parquet(Path(built["data_dir"]) / "users.parquet", columns=["user_id"])["user_id"]
            data = input_data(scratch / f"users-{built['items']}.json", users.to_numpy(), 2000, seed=built["items"])
            entry = {"items": built["items"], "users": built["users"], "online_version": refresh["version"],
                     "load_average_before": loadavg(), "floor": {}, "modes": {}}
            for c in concurrencies:
                entry["floor"][f"c{c}"] = perf_analyzer(env, s.triton_grpc, repository.FLOOR, c, data, requests,
                                                         scratch / f"pa-{built['items']}-{c}.floor.csv")
            for mode, delay in modes:
                version += 1
                log(f"  model version {version}: {mode} (batch delay {delay})")
                pipeline = repository.pipeline_from_settings(replace(s, triton_batch_delay_us=delay), manifest)
                repository.write_model_versions(repository.exports_from_run(Path(built["run_dir"])), s.triton_repo,
                                                version, pipeline, lineage={"source": "bench/serving.py"},
                                                prior_slot=prior_slot(built))
                began = time.perf_counter()
                control.load_model(s, repository.FOUR_STAGE)
                runs = {"model_version": version, "dynamic_batching_delay_us": delay,
                        "model_load_seconds": round(time.perf_counter() - began, 1)}
                for c in concurrencies:
                    if args.replicas:  # one replica beside two, at the same total concurrency
                        if c >= 2:
                            runs[f"c{c}"] = compare_replicas(env, s, c, data, scratch, 5000 if args.quick else 10000,
                                                            args.rounds)
                        continue
                    run = perf_analyzer(env, s.triton_grpc, repository.FOUR_STAGE, c, data, requests,
                                        scratch / f"pa-{built['items']}-{c}-{mode}.csv")
                    run["p50_over_floor_p50"] = round(run["p50_ms"] / entry["floor"][f"c{c}"]["p50_ms"], 1)
                    run["load_average_after"] = loadavg()
                    runs[f"c{c}"] = run
                entry["modes"][mode] = runs
            entry["index"] = json.loads((s.triton_repo / "recsys" / str(version) / "index" / "index.json").read_text())
            result["catalogues"].append(entry)
    finally:
        stack.down(s, only=["triton", "redis"])
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    from recsys.data.versioning import write_json_atomic

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    log(f"wrote {args.out}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
