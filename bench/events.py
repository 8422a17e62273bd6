"""Live events benchmark (not a test): writes bench/results/events.json.

One run, one stack of our own in a scratch home (the embedded Redis, Triton, the recsys HTTP API and
the event worker, on free ports), the 10k-item catalogue of bench/serving.py (built once into its
``--work`` folder and reused):

1. **accept throughput**: ``redis-benchmark`` XADD of the event log's entry shape (6 fields, the same
   value sizes) with one pipelined client (``-c 1 -P 64``) and with 8, the ceiling; beside it, in
   alternating rounds, the online store's accept (``RedisOnlineStore.accept_events``, batches of
   1000, one client: what Redis takes). (a) On a Redis of its own (the embedded service, nothing else
   on it): the goal's figure, store accept >= 0.5x of one pipelined client. (b) On the serving stack's
   Redis (the event worker stopped meanwhile), then the live applier's rate catching up with those
   events once the worker starts, and the HTTP API's ``POST /v1/events`` (1000 events per request:
   JSON, validation, accept; everything running).
2. **accept-to-visible**: background events flow through the API at 1k and then 5k events/s (random
   users and items); probes: a user's current top item is bought through the API, then the user's
   recommendations are asked of Triton (gRPC) until the item is gone. p50/p99 of the time from the
   API's 202 to the first answer without it (goal p99 <= 1 s); the time per poll is recorded (the
   resolution).
3. **serving while events flow**: perf_analyzer (gRPC) on ``recsys`` at concurrency 1 and 16 over
   2000 users no event touched yet (no live state: what serving cost before live events); then,
   after 20 s of events to those users (each has ~10 live items, read, filtered, fed to the models
   and searched for neighbours), alternating rounds idle and while events flow at 1k/s to them.
   Goal: p99 while flowing <= 1.5x the idle p99; the idle / no-live-state ratio is the price of the
   live features themselves.
4. **HTTP API recommendations**: ``wrk`` on ``GET /v1/recommendations/{user}`` (random known users,
   k=10) at concurrency 1 and 16, beside perf_analyzer's gRPC on ``recsys`` in the same run.

Needs Debian's ``redis-tools`` (redis-benchmark) and ``wrk``: ``apt-get install redis-tools wrk``.
Run from the repository root with the control-plane interpreter:

    .envs/control/bin/python bench/events.py            # ~15 min (first run builds the catalogue)
    .envs/control/bin/python bench/events.py --quick    # shorter rounds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import build_catalogue, input_data, loadavg, log, perf_analyzer, perf_analyzer_env, prior_slot  # noqa: E402
from recsys import credentials  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary_ms(seconds: list[float]) -> dict:
    ms = [1000 * s for s in seconds]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p90_ms": round(percentile(ms, 90), 2),
            "p99_ms": round(percentile(ms, 99), 2), "max_ms": round(max(ms), 2)}


# --- 1. accept throughput --------------------------------------------------------------------------
def xadd_ceiling(port: int, password: str | None, n: int) -> dict:
    """redis-benchmark XADD of one event-log entry per command (the log's fields and value sizes)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        sys.exit("redis-benchmark not found: `apt-get install redis-tools` (Debian/Ubuntu)")
    out = {}
    for clients in (1, 8):
        command = [binary, "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-P", "64", "-n", str(n), "--csv",
                   "XADD", "ceiling:events", "*", "u", "12345", "i", "5678", "e", "purchase", "t", "1765000000000",
                   "r", "", "k", "ii"]
        if password:
            command[1:1] = ["-a", password]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        last = [line for line in done.stdout.strip().splitlines() if line.startswith('"XADD')][-1]
        out[f"clients_{clients}"] = round(float(last.split(",")[1].strip('"')), 1)
    return out


def event_batches(users: list, items: list, n_batches: int, size: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    now = time.time()
    return [[{"user_id": rng.choice(users), "item_id": rng.choice(items), "event_type": rng.choice(("view", "click", "purchase")),
              "timestamp": now - rng.random() * 600} for _ in range(size)] for _ in range(n_batches)]


def store_accept_rate(store, rules, batches: list[list[dict]]) -> dict:
    from recsys.events.validation import validate_events

    validated = [validate_events(b, rules) for b in batches]
    # the benchmark's own million prepared objects must not be what the garbage collector walks while timed
    gc.collect()
    gc.freeze()
    began = time.perf_counter()
    for batch in validated:
        store.accept_events(batch)
    seconds = time.perf_counter() - began
    gc.unfreeze()
    n = sum(len(b) for b in validated)
    began = time.perf_counter()
    for b in batches:
        validate_events(b, rules)
    validate_seconds = time.perf_counter() - began
    return {"events": n, "events_per_s": round(n / seconds, 1), "validation_events_per_s": round(n / validate_seconds, 1)}


def api_accept_rate(http, batches: list[list[dict]]) -> dict:
    n = 0
    gc.collect()
    gc.freeze()
    began = time.perf_counter()
    for batch in batches:
        response = http.post("/v1/events", json={"events": batch})
        if response.status_code != 202:
            raise SystemExit(f"POST /v1/events: {response.status_code} {response.text[:500]}")
        n += len(batch)
    seconds = time.perf_counter() - began
    gc.unfreeze()
    return {"events": n, "events_per_s": round(n / seconds, 1)}


def wait_applied(store, timeout: float = 300) -> dict:
    """Wait until the live applier (the event worker) caught up; its rate from the stats' times."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        stats = store.event_stats()
        if stats.get("applied", 0) >= stats.get("accepted", 0):
            return stats
        time.sleep(0.05)
    raise SystemExit(f"the live applier did not catch up within {timeout} s: {store.event_stats()}")


# --- 2. events flowing, and probes -------------------------------------------------------------------
class EventFlow(threading.Thread):
    """Events through the API at ``rate`` per second, in 20 batches a second, until stopped."""

    def __init__(self, api: str, token: str, rate: int, users: list, items: list, seed: int = 1):
        super().__init__(daemon=True)
        import httpx

        self.http = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.rate, self.users, self.items = rate, users, items
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.sent = 0
        self.late_ticks = 0

    def run(self) -> None:
        tick = 0.05
        per_tick = max(1, int(self.rate * tick))
        next_at = time.perf_counter()
        while not self.stop.is_set():
            now = time.time()
            batch = [{"user_id": self.rng.choice(self.users), "item_id": self.rng.choice(self.items),
                      "event_type": self.rng.choice(("view", "click")), "timestamp": now} for _ in range(per_tick)]
            response = self.http.post("/v1/events", json={"events": batch})
            if response.status_code != 202:
                raise SystemExit(f"event flow: {response.status_code} {response.text[:300]}")
            self.sent += per_tick
            next_at += tick
            wait = next_at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                self.late_ticks += 1

    def achieved(self, seconds: float) -> float:
        return round(self.sent / seconds, 1)


def probe_visibility(api_http, triton, users: list, n: int, seed: int) -> dict:
    """Buy each probe user's top item through the API; poll Triton until it is gone from the answer."""
    rng = random.Random(seed)
    to_visible, from_send, polls, poll_seconds = [], [], [], []
    for user in rng.sample(users, n):
        before = [item for item, _ in triton.recommend(user, 10)]
        if not before:
            continue
        item = before[0]
        sent = time.perf_counter()
        response = api_http.post("/v1/events", json={"events": [{"user_id": user, "item_id": item, "event_type": "purchase",
                                                                 "timestamp": time.time()}]})
        accepted = time.perf_counter()
        if response.status_code != 202:
            raise SystemExit(f"probe: {response.status_code} {response.text[:300]}")
        count = 0
        while True:
            asked = time.perf_counter()
            after = [i for i, _ in triton.recommend(user, 10)]
            poll_seconds.append(time.perf_counter() - asked)
            count += 1
            if item not in after:
                seen = time.perf_counter()
                break
            if seen_timeout(accepted, 10.0):
                raise SystemExit(f"user {user}: item {item} still recommended 10 s after the purchase was accepted")
        to_visible.append(seen - accepted)
        from_send.append(seen - sent)
        polls.append(count)
    return {"accept_to_visible": summary_ms(to_visible), "send_to_visible": summary_ms(from_send),
            "polls_per_probe_median": statistics.median(polls), "poll": summary_ms(poll_seconds)}


def seen_timeout(since: float, seconds: float) -> bool:
    return time.perf_counter() - since > seconds


# --- 4. wrk on the HTTP API ----------------------------------------------------------------------------
WRK_SCRIPT = """
local users = {%(users)s}
math.randomseed(%(seed)d)
request = function()
  local u = users[math.random(#users)]
  return wrk.format("GET", "/v1/recommendations/" .. u .. "?k=10", {["Authorization"] = "Bearer %(token)s"})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%d\\n", latency:percentile(50), latency:percentile(90),
    latency:percentile(99), summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def wrk(api: str, token: str, users: list, concurrency: int, seconds: int, scratch: Path, seed: int) -> dict:
    binary = shutil.which("wrk")
    if binary is None:
        sys.exit("wrk not found: `apt-get install wrk` (Debian/Ubuntu)")
    script = scratch / f"wrk-{concurrency}.lua"
    script.write_text(WRK_SCRIPT % {"users": ",".join(json.dumps(str(u)) for u in users[:5000]), "token": token, "seed": seed})
    threads = min(concurrency, 2)
    done = subprocess.run([binary, "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "-s", str(script), api],
                          capture_output=True, text=True, timeout=seconds + 60)
    line = next((row for row in done.stdout.splitlines() if row.startswith("RESULT")), None)
    if line is None:
        raise SystemExit(f"wrk failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    p50, p90, p99, requests, duration_us, errors, non2xx = (int(v) for v in line.split()[1:])
    result = {"concurrency": concurrency, "p50_ms": round(p50 / 1000, 3), "p90_ms": round(p90 / 1000, 3),
              "p99_ms": round(p99 / 1000, 3), "throughput_per_s": round(requests / (duration_us / 1e6), 1),
              "requests": requests, "socket_errors": errors, "non_2xx": non2xx}
    log(f"  http api      c={concurrency:<3d} {result['throughput_per_s']:8.1f} req/s    p50 {result['p50_ms']:7.2f} ms  "
        f"p99 {result['p99_ms']:7.2f} ms  errors {errors} non-2xx {non2xx}")
    if errors or non2xx:
        raise SystemExit(f"wrk saw {errors} socket errors and {non2xx} non-2xx answers: {result}")
    return result


# --- the run ------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-serving",
                        help="the catalogue bench/serving.py builds (kept and reused)")
    parser.add_argument("--out", type=Path, default=RESULTS / "events.json")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    probes = 50 if args.quick else args.probes
    requests = 600 if args.quick else 2000
    wrk_seconds = 8 if args.quick else 20
    built = build_catalogue(args.work, args.items, args.users, args.interactions, 64)

    import httpx
    import pandas as pd

    from recsys import stack
    from recsys.events.validation import CatalogueCache
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.online.refresh import refresh_online_store
    from recsys.serving import control, repository
    from recsys.serving.client import RecommendClient
    from recsys.settings import load_settings, replace
    from recsys.stack.service import free_port

    scratch = Path(tempfile.mkdtemp(prefix="recsys-bench-events-"))
    pa_env = perf_analyzer_env(scratch)
    token = os.urandom(16).hex()
    s = replace(
        load_settings(), home=scratch / "home", redis_url=None, triton_url=None, api_url=None, api_token=token,
        redis_port=free_port(), triton_http_port=free_port(), triton_grpc_port=free_port(),
        triton_metrics_port=free_port(), api_port=free_port(), events_metrics_port=free_port(), online_key_prefix="bench",
    )
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": loadavg(),
        "catalogue": {"items": built["items"], "users": built["users"], "interactions": built["interactions"]},
    }
    log(f"stack in {s.home} (Redis :{s.redis_port}, Triton gRPC :{s.triton_grpc_port}, API :{s.api_port}), load {loadavg()}")
    stack.up(s, only=["redis", "triton"])
    try:
        refresh_online_store(built["features_dir"], built["data_dir"], settings=s)
        manifest = json.loads((Path(built["features_dir"]) / "manifest.json").read_text())
        pipeline = repository.pipeline_from_settings(s, manifest)
        repository.write_model_versions(repository.exports_from_run(Path(built["run_dir"])), s.triton_repo, 1, pipeline,
                                        lineage={"source": "bench/events.py"}, prior_slot=prior_slot(built))
        control.load_model(s, repository.FOUR_STAGE)
        stack.up(s, only=["api", "events"])
        store = RedisOnlineStore.from_settings(s)
        all_users = pd.read_parquet(Path(built["data_dir"]) / "users.parquet", columns=["user_id"])["user_id"].tolist()
        # users of part 3 get no event before it: its first measurement is serving without any live state
        probe_users = random.Random(3).sample(all_users, 2000)
        reserved = set(probe_users)
        users = [u for u in all_users if u not in reserved]
        items = store.entity_ids(store.current().version, "items").tolist()
        api_http = httpx.Client(base_url=s.api, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        rules = CatalogueCache(store, s).rules()

        # 1. accept throughput: the store's accept beside the XADD ceiling on an otherwise idle Redis (the
        # event worker stopped: its applier would compete for the same Redis), then the applier's rate
        # catching up with what was accepted, then the HTTP API with everything running
        log("1. accept throughput")
        n_batches = 50 if args.quick else 200
        # 1a. on a Redis of its own (the embedded service's binary and configuration, snapshots off): the
        # accept path against Redis' own XADD rate, alternating, nothing else on the server
        alone = replace(s, home=scratch / "redis-alone", redis_port=free_port())
        stack.up(alone, only=["redis"])
        try:
            own = RedisOnlineStore.from_settings(alone)
            own.client.config_set("save", "")
            alone_rounds = {"ceiling": [], "store": []}
            for r in range(rounds):
                alone_rounds["ceiling"].append(xadd_ceiling(alone.redis_port, credentials.ensure(alone, credentials.REDIS_PASSWORD), n_batches * 1000))
                own.client.delete("ceiling:events")
                alone_rounds["store"].append(store_accept_rate(own, rules, event_batches(users, items, n_batches, 1000, seed=r)))
                log(f"  alone, round {r + 1}: ceiling 1 client {alone_rounds['ceiling'][-1]['clients_1']:,.0f}/s, store "
                    f"accept {alone_rounds['store'][-1]['events_per_s']:,.0f}/s")
            own.close()
        finally:
            stack.down(alone, only=["redis"])
        # 1b. on the serving stack's Redis (holding the online version, the live state and the log): the same
        # accept with the event worker stopped, the live applier catching up, and the HTTP API
        accept = {"ceiling": [], "store": [], "applier": [], "api": [], "alone": alone_rounds,
                  "conditions": "1a (alone): a Redis of its own, nothing else on it; 1b: the serving stack's Redis, "
                                "the event worker stopped during the ceiling and the store's accept. Redis' RDB "
                                "snapshots off in both (a snapshot's fork during one measurement and not the other "
                                "would decide the ratio)"}
        saving = store.client.config_get("save")["save"]
        store.client.config_set("save", "")
        for r in range(rounds):
            stack.down(s, only=["events"])
            accept["ceiling"].append(xadd_ceiling(s.redis_port, credentials.ensure(s, credentials.REDIS_PASSWORD), n_batches * 1000))
            store.client.delete("ceiling:events")
            backlog_before = store.event_stats().get("applied", 0)
            accept["store"].append(store_accept_rate(store, rules, event_batches(users, items, n_batches, 1000, seed=r)))
            began = time.perf_counter()
            stack.up(s, only=["events"])
            wait_applied(store)
            applied = store.event_stats().get("applied", 0) - backlog_before
            accept["applier"].append({"events": applied, "events_per_s": round(applied / (time.perf_counter() - began), 1),
                                      "note": "from starting the event worker (~1 s of it) until it applied the round's events"})
            accept["api"].append(api_accept_rate(api_http, event_batches(users, items, n_batches // 4, 1000, seed=100 + r)))
            wait_applied(store)
            log(f"  round {r + 1}: ceiling 1 client {accept['ceiling'][-1]['clients_1']:,.0f}/s, store accept "
                f"{accept['store'][-1]['events_per_s']:,.0f}/s, applier {accept['applier'][-1]['events_per_s']:,.0f}/s, "
                f"API {accept['api'][-1]['events_per_s']:,.0f}/s")
        store.client.config_set("save", saving)
        med = lambda rows, key: statistics.median(row[key] for row in rows)  # noqa: E731
        accept["alone_median"] = {
            "ceiling_1_client_per_s": med(alone_rounds["ceiling"], "clients_1"),
            "ceiling_8_clients_per_s": med(alone_rounds["ceiling"], "clients_8"),
            "store_accept_per_s": med(alone_rounds["store"], "events_per_s"),
        }
        accept["alone_median"]["store_over_ceiling_1_client"] = round(
            accept["alone_median"]["store_accept_per_s"] / accept["alone_median"]["ceiling_1_client_per_s"], 3)
        accept["median"] = {
            "ceiling_1_client_per_s": med(accept["ceiling"], "clients_1"),
            "ceiling_8_clients_per_s": med(accept["ceiling"], "clients_8"),
            "store_accept_per_s": med(accept["store"], "events_per_s"),
            "validation_per_s": med(accept["store"], "validation_events_per_s"),
            "api_accept_per_s": med(accept["api"], "events_per_s"),
            "applier_per_s": med(accept["applier"], "events_per_s"),
        }
        accept["median"]["store_over_ceiling_1_client"] = round(
            accept["median"]["store_accept_per_s"] / accept["median"]["ceiling_1_client_per_s"], 3)
        accept["median"]["api_over_ceiling_1_client"] = round(
            accept["median"]["api_accept_per_s"] / accept["median"]["ceiling_1_client_per_s"], 3)
        result["accept"] = accept
        result["load_average_after_accept"] = loadavg()

        # 2. accept-to-visible under a background flow
        log("2. accept-to-visible")
        triton = RecommendClient.from_settings(s)
        visible = {}
        for rate in (1000, 5000):
            flow = EventFlow(s.api, token, rate, users, items, seed=rate)
            flow.start()
            time.sleep(2)
            began, sent = time.perf_counter(), flow.sent
            visible[f"{rate}_per_s"] = probe_visibility(api_http, triton, users, probes, seed=rate)
            visible[f"{rate}_per_s"]["flow_achieved_per_s"] = round((flow.sent - sent) / (time.perf_counter() - began), 1)
            flow.stop.set()
            flow.join()
            visible[f"{rate}_per_s"]["load_average"] = loadavg()
            v = visible[f"{rate}_per_s"]
            log(f"  {rate}/s (achieved {v['flow_achieved_per_s']:,.0f}/s): accept-to-visible p50 "
                f"{v['accept_to_visible']['p50_ms']} ms, p99 {v['accept_to_visible']['p99_ms']} ms")
            wait_applied(store)
        result["visibility"] = visible

        # 3. serving idle vs while events flow at 1k/s, and 4. the HTTP API beside Triton's gRPC
        log("3. serving: no live state, then idle vs while events flow; 4. HTTP API vs gRPC")
        data = input_data(scratch / "users.json", probe_users, 2000, seed=3)
        measure = lambda state, r: {f"c{c}": perf_analyzer(  # noqa: E731
            pa_env, s.triton_grpc, repository.FOUR_STAGE, c, data, requests, scratch / f"pa-{state}-{r}-{c}.csv") for c in (1, 16)}
        serving = {"no_live_state": measure("cold", 0), "idle": [], "flowing": []}
        serving["no_live_state"]["load_average"] = loadavg()
        warm = EventFlow(s.api, token, 1000, probe_users, items, seed=9)  # ~10 live items per probe user
        warm.start()
        time.sleep(20)
        warm.stop.set()
        warm.join()
        wait_applied(store)
        http_api = {"grpc": [], "http": []}
        for r in range(rounds):
            for state in ("idle", "flowing"):
                flow = None
                if state == "flowing":
                    flow = EventFlow(s.api, token, 1000, probe_users, items, seed=10 + r)
                    flow.start()
                    time.sleep(1)
                began, sent = time.perf_counter(), flow.sent if flow else 0
                row = measure(state, r)
                if flow is not None:
                    row["flow_achieved_per_s"] = round((flow.sent - sent) / (time.perf_counter() - began), 1)
                    flow.stop.set()
                    flow.join()
                    wait_applied(store)
                row["load_average"] = loadavg()
                serving[state].append(row)
            for c in (1, 16):
                http_api["grpc"].append(perf_analyzer(pa_env, s.triton_grpc, repository.FOUR_STAGE, c, data, requests,
                                                      scratch / f"pa-grpc-{r}-{c}.csv"))
                http_api["http"].append(wrk(s.api, token, probe_users, c, wrk_seconds, scratch, seed=r))
        for key in ("c1", "c16"):
            idle = statistics.median(row[key]["p99_ms"] for row in serving["idle"])
            flowing = statistics.median(row[key]["p99_ms"] for row in serving["flowing"])
            cold = serving["no_live_state"][key]["p99_ms"]
            serving[f"{key}_median_p99_ms"] = {"no_live_state": cold, "idle": idle, "flowing": flowing,
                                               "flowing_over_idle": round(flowing / idle, 2),
                                               "idle_over_no_live_state": round(idle / cold, 2)}
        result["serving_while_events_flow"] = serving
        for c in (1, 16):
            grpc = [row for row in http_api["grpc"] if row["concurrency"] == c]
            http = [row for row in http_api["http"] if row["concurrency"] == c]
            http_api[f"c{c}_median"] = {
                "grpc_p50_ms": statistics.median(r["p50_ms"] for r in grpc), "grpc_p99_ms": statistics.median(r["p99_ms"] for r in grpc),
                "http_p50_ms": statistics.median(r["p50_ms"] for r in http), "http_p99_ms": statistics.median(r["p99_ms"] for r in http),
                "grpc_per_s": statistics.median(r["throughput_per_s"] for r in grpc),
                "http_per_s": statistics.median(r["throughput_per_s"] for r in http),
            }
        result["http_api"] = http_api
        result["event_stats"] = store.event_stats()
        api_http.close()
        triton.close()
        store.close()
    finally:
        stack.down(s, only=["events", "api", "triton", "redis"])
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["load_average_at_end"] = loadavg()
    from recsys.data.versioning import write_json_atomic

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    log(f"wrote {args.out}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
