"""Is the online store's Redis memory bounded under repeated refreshes? (not a test; writes
bench/results/redis_memory.json)

bench/soak.py saw the embedded Redis's resident memory (RSS) grow from 32 MB at the start to 124 MB
after 10 refreshes in 10 minutes, while the memory Redis itself counts as used stayed between one and
three versions' worth. Growth over a short soak cannot tell a leak from a high-water mark; many more
refresh cycles can. This runs the embedded Redis exactly as ``recsys stack up`` configures it (its
``redis.conf``: password, AOF ``everysec``), writes the online store's versions with the product's
own code (``RedisOnlineStore.refresh`` of a 100k-user / 10k-item snapshot, built from
tests/online_sample.py's data), and collects retired versions as the refresh DAG does, with the grace
period the soak used (one refresh interval: at most the current version, one retired within its grace
and one being written exist at once). After every cycle: used memory, RSS, fragmentation.

Bounded means: the RSS of the last half of the cycles grows by less than 10% over the highest RSS of
the first half (the high-water mark reached once the working set exists).

    .envs/control/bin/python bench/redis_memory.py              # 40 cycles, ~5 min
    .envs/control/bin/python bench/redis_memory.py --quick      # 12 cycles, 10k users (redis_memory-quick.json)
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import RESULTS, loadavg, log, scratch_stack  # noqa: E402

BOUND = 0.10
"""The last half's RSS may exceed the first half's high-water mark by less than this."""


def memory(client) -> dict:
    info = client.info("memory")
    return {"used_mb": round(info["used_memory"] / 2**20, 1), "rss_mb": round(info["used_memory_rss"] / 2**20, 1),
            "fragmentation": info.get("mem_fragmentation_ratio"), "allocator": info.get("mem_allocator")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=None, help="refreshes (default 40; --quick 12)")
    parser.add_argument("--users", type=int, default=None, help="default 100000 (--quick 10000)")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cycles = args.cycles or (12 if args.quick else 40)
    users = args.users or (10_000 if args.quick else 100_000)
    out = args.out or RESULTS / f"redis_memory{'-quick' if args.quick else ''}.json"

    from recsys import stack
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.online.snapshot import build_snapshot
    from recsys.stack.redis import redis_server_binary
    from online_sample import write_sample_versions

    result: dict = {"benchmark": "redis_memory", "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
                    "load_average_at_start": loadavg(), "cycles": cycles, "users": users, "items": args.items,
                    "redis_server": str(redis_server_binary()), "bound": BOUND}
    with tempfile.TemporaryDirectory(prefix="recsys-redis-memory-") as scratch:
        home = Path(scratch) / "home"
        settings = scratch_stack(home)
        stack.up(settings, only=["redis"])
        try:
            features = write_sample_versions(home, n_users=users, n_items=args.items, n_interactions=users * 10)
            data = home / "data" / __import__("json").loads((features / "manifest.json").read_text())["data_version"]
            snapshot = build_snapshot(features, data)
            store = RedisOnlineStore.from_settings(settings)
            client = store.client
            result["redis_version"] = client.info("server")["redis_version"]
            result["redis_config"] = {k: v for k, v in client.config_get("append*").items() if k in ("appendonly", "appendfsync")}
            rows = []
            # Grace of one refresh interval: after refresh n, the versions retired before refresh n-1 ended
            # are collected (n-2 and older); n-1 stays readable, as the soak's schedule keeps it.
            store.grace_seconds = 0.0
            previous_end = 0.0
            for n in range(cycles + 1):
                began = time.perf_counter()
                refreshed = store.refresh(snapshot, force=True)
                store.collect_garbage(now=previous_end)
                previous_end = time.time()
                time.sleep(1.0)  # UNLINK frees in a background thread, and Redis samples its RSS in its cron
                row = {"cycle": n, "seconds": round(time.perf_counter() - began, 2), "version": refreshed.version,
                       "retired_kept": len(client.zrange(store.key_retired, 0, -1)), **memory(client)}
                rows.append(row)
                log(f"cycle {n:3d}: used {row['used_mb']:6.1f} MB, RSS {row['rss_mb']:6.1f} MB, "
                    f"fragmentation {row['fragmentation']}, {row['seconds']} s")
        finally:
            stack.down(settings)
    half = len(rows) // 2
    first_high = max(r["rss_mb"] for r in rows[1:half])  # cycle 0 is the first version alone
    last_high = max(r["rss_mb"] for r in rows[half:])
    result.update({
        "rows": rows,
        "rss_at_start_mb": rows[0]["rss_mb"], "rss_at_end_mb": rows[-1]["rss_mb"],
        "used_mb_max": max(r["used_mb"] for r in rows),
        "rss_first_half_max_mb": first_high, "rss_last_half_max_mb": last_high,
        "last_half_growth_pct": round(100 * (last_high - first_high) / first_high, 1),
        "load_average_at_end": loadavg(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    result["bounded"] = result["last_half_growth_pct"] < 100 * BOUND
    from recsys.data.versioning import write_json_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    log(f"RSS {result['rss_at_start_mb']} MB (one version) -> high-water {first_high} MB in the first half, "
        f"{last_high} MB in the last ({result['last_half_growth_pct']:+.1f}%): "
        f"{'bounded' if result['bounded'] else 'still growing'}; wrote {out}")


if __name__ == "__main__":
    main()
