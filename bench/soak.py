"""Soak benchmark (not a test): the served model under steady load while the platform refreshes and publishes.

Writes bench/results/soak.json. One run, one stack of its own: every service of ``recsys stack up``
(Redis, MLflow, Airflow's four components, Triton, the HTTP API, the event worker) in a scratch
RECSYS_HOME under the temp dir, on free ports, stopped at the end (``recsys stack down``).

1. **A served champion, through the product's pipeline** (bench/common.py ``serve_champion``): the
   landing data of bench/serving.py's 10k-item catalogue (100k users, 400k interactions; generated once
   into ``--work`` and reused) -> ingest -> NVTabular ETL -> one-epoch training + MLflow run (Merlin
   runtime) -> champion gate -> online store -> publish: Triton version 1.
2. **Load**: for ``--minutes`` (default 10), ``--concurrency`` (16) threads, each with its own
   ``RecommendClient`` (gRPC, recsys/serving/client.py), ask the ``recsys`` model for the top 10 of random
   users (5% unknown ones: cold start), back to back. A request **fails** when it raises (any error,
   Triton's or the connection's) or its answer is not exactly k items.
3. **Meanwhile**, each as its own CLI process, as an operator or a DAG task would run it:
   ``recsys online refresh --force`` every ``--refresh-every`` seconds (60: a new online version of the
   served feature version written to Redis, the atomic switch, garbage collection of retired versions;
   the grace period is scaled like the schedule: ``--gc-grace-seconds``, default the refresh interval, as
   the defaults pair an hourly refresh with an hour's grace), and ``recsys serving publish --force`` every
   ``--publish-every`` seconds (180: Triton version N+1 of the champions, downloaded from MLflow, verified,
   loaded, smoke-tested, old versions pruned).
4. **Measured**: per minute, requests, failed requests, p50 / p99 / max latency, throughput, the
   refreshes and publishes that ran, the load average; the resident memory (RSS, psutil) of every
   service's processes (the server and its children: Triton's python-backend stubs, MLflow's workers,
   each Airflow component separately) at the start (the model served, before the load), every 30 s,
   and at the end (the load stopped, once the versions the last publish replaced are unloaded). The
   load goes on past ``--minutes`` until every scheduled operation is done, so each one is measured
   under load (one that takes longer than its interval delays the next, which still runs).

Goals: 0 failed requests; every service's RSS at the end within 10% of the start.

Run from the repository root with the control-plane interpreter (the Merlin runtime trains):

    .envs/control/bin/python bench/soak.py                 # ~17 min: ~7 of setup, 10 of soak
    .envs/control/bin/python bench/soak.py --minutes 2 --refresh-every 30 --publish-every 60   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONTROL_BIN, RESULTS, loadavg, log, scratch_stack, serve_champion  # noqa: E402
from serving import UNKNOWN_USER_SHARE, build_catalogue  # noqa: E402

RSS_GOAL = 0.10
"""Every service's RSS at the end within 10% of the start."""
PLURAL = {"refresh": "refreshes", "publish": "publishes"}


CLI_ENV: dict[str, str] = {}
"""The environment of every ``recsys`` command: the scratch stack's settings, taken before this process made
an MLflow client (``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI, which would make the embedded
MLflow look external to the commands: `recsys stack down` would then leave it running)."""


def recsys_cli(*argv: str, check: bool = True, stream: bool = False, timeout: float = 900) -> subprocess.CompletedProcess:
    """``recsys ARGV`` of the control plane in the scratch stack's environment (:data:`CLI_ENV`)."""
    command = [str(CONTROL_BIN / "recsys"), *argv]
    if stream:  # progress lines straight to the terminal
        done = subprocess.run(command, timeout=timeout, text=True, env=CLI_ENV)
    else:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=CLI_ENV)
    if check and done.returncode != 0:
        raise SystemExit(f"`recsys {' '.join(argv)}` failed (exit {done.returncode}):\n"
                         f"{(done.stdout or '')[-2000:]}\n{(done.stderr or '')[-3000:]}")
    return done


def json_of(text: str) -> Optional[Any]:
    """The JSON document a CLI command printed (from its first ``{``), or None."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError:
        return None


# --- memory ----------------------------------------------------------------------------------------
def service_processes(settings) -> dict[str, list[int]]:
    """Every service's processes (the server and its descendants); each Airflow component on its own."""
    from recsys import stack

    out: dict[str, list[int]] = {}
    for service in stack.services(settings):
        if service.name == "airflow":
            for proc in service.processes:
                out[f"airflow {proc.name}"] = proc.all_pids()
        else:
            out[service.name] = service.all_pids()
    return out


def memory(settings, detail: bool = False) -> dict[str, Any]:
    """RSS per service in MB (the sum over its processes) and its process count; ``detail``: each process."""
    import psutil

    out: dict[str, Any] = {}
    for name, pids in service_processes(settings).items():
        total, processes = 0, []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                rss = proc.memory_info().rss
                if detail:
                    processes.append({"pid": pid, "name": proc.name(), "rss_mb": round(rss / 2**20, 1)})
            except psutil.Error:  # gone meanwhile (a worker replaced)
                continue
            total += rss
        out[name] = {"rss_mb": round(total / 2**20, 1), "processes": len(pids)}
        if detail:
            out[name]["each"] = processes
    return out


def settle(settings, counts: dict[str, int], timeout: float = 180.0) -> Optional[float]:
    """Wait until no service runs more processes than ``counts`` (Triton unloads a replaced version's
    python-backend processes some seconds after the new one serves); the seconds it took, None on timeout."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        now = {name: len(pids) for name, pids in service_processes(settings).items()}
        if all(now.get(name, 0) <= n for name, n in counts.items()):
            return round(time.perf_counter() - began, 1)
        time.sleep(2)
    return None


def redis_memory(settings) -> dict[str, Any]:
    """What Redis holds (``used_memory``: the data) beside what it occupies (``used_memory_rss``), in MB."""
    from recsys.online.redis_store import RedisOnlineStore

    try:
        with RedisOnlineStore.from_settings(settings) as store:
            info = store.client.info("memory")
    except Exception as exc:  # a figure beside the RSS, never a reason to stop the soak
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    return {"used_mb": round(info["used_memory"] / 2**20, 1), "rss_mb": round(info["used_memory_rss"] / 2**20, 1),
            "fragmentation": info.get("mem_fragmentation_ratio")}


# --- load ------------------------------------------------------------------------------------------
class Load:
    """``concurrency`` threads asking the served model back to back; every request recorded."""

    def __init__(self, settings, users: list, k: int, concurrency: int, seed: int = 0):
        self.settings, self.users, self.k, self.concurrency = settings, users, k, concurrency
        self.seed = seed
        self.stop = threading.Event()
        self.started = 0.0
        # per thread: (finished at, seconds) of each request; failures: (finished at, user, message)
        self.done: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
        self.failed: list[list[tuple[float, Any, str]]] = [[] for _ in range(concurrency)]
        self._drained = [(0, 0)] * concurrency
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True, name=f"load-{n}") for n in range(concurrency)]

    def start(self) -> None:
        self.started = time.perf_counter()
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=180)

    def _run(self, n: int) -> None:
        from recsys.serving.client import RecommendClient

        rng = random.Random(self.seed * 1000 + n)
        done, failed = self.done[n], self.failed[n]
        client = RecommendClient(self.settings)
        try:
            while not self.stop.is_set():
                user = rng.choice(self.users) if rng.random() >= UNKNOWN_USER_SHARE else -rng.randint(1, 10**9)
                began = time.perf_counter()
                error = None
                try:
                    answer = client.recommend(user, self.k)
                    if len(answer) != self.k:
                        error = f"{len(answer)} items instead of {self.k}"
                except Exception as exc:  # every failure counts, whatever raised it
                    error = f"{type(exc).__name__}: {exc}"[:400]
                ended = time.perf_counter()
                done.append((ended - self.started, ended - began))
                if error:
                    failed.append((ended - self.started, user, error))
                    if len(failed) > 10_000:  # a dead server: no point in recording more of the same
                        time.sleep(0.01)
        finally:
            client.close()

    def drain(self) -> tuple[list[float], int]:
        """(latencies in seconds, failures) of the requests finished since the last drain (cheap: the
        progress line must not steal the load's CPU by walking every request each time)."""
        latencies, failures = [], 0
        for n in range(self.concurrency):
            done, failed = self.done[n], self.failed[n]
            d, f = len(done), len(failed)
            latencies += [s for _, s in done[self._drained[n][0]:d]]
            failures += f - self._drained[n][1]
            self._drained[n] = (d, f)
        return latencies, failures

    def window(self, since: float, until: float) -> tuple[list[float], int]:
        """(latencies in seconds, failures) of the requests that finished in [since, until) seconds."""
        latencies = [s for rows in self.done for (at, s) in rows if since <= at < until]
        failures = sum(1 for rows in self.failed for (at, _, _) in rows if since <= at < until)
        return latencies, failures


def stats(latencies: list[float], failures: int, seconds: float) -> dict[str, Any]:
    import numpy as np

    if not latencies:
        return {"requests": 0, "failed": failures, "per_s": 0.0}
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "failed": failures, "per_s": round(len(ms) / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2)}


# --- operations ------------------------------------------------------------------------------------
class Operator(threading.Thread):
    """Runs ``recsys ARGV`` every ``every`` seconds of the soak (first at ``every``) until ``end`` seconds."""

    def __init__(self, name: str, argv: list[str], every: float, end: float, load: Load):
        super().__init__(daemon=True, name=name)
        self.op, self.argv, self.every, self.end, self.load = name, argv, every, end, load
        self.runs: list[dict[str, Any]] = []
        self.finished = threading.Event()
        """Set once every scheduled run is done (a run that overran delays the next, which still runs)."""

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.finished.set()

    def _run(self) -> None:
        n = 1
        while n * self.every < self.end and not self.load.stop.is_set():
            wait = self.load.started + n * self.every - time.perf_counter()
            if wait > 0 and self.load.stop.wait(wait):
                return
            began = time.perf_counter()
            done = recsys_cli(*self.argv, check=False)
            seconds = time.perf_counter() - began
            row: dict[str, Any] = {"n": n, "scheduled_s": n * self.every, "started_s": round(began - self.load.started, 1),
                                   "seconds": round(seconds, 1), "exit": done.returncode}
            answer = json_of(done.stdout)
            if done.returncode != 0 or answer is None:
                row["error"] = ((done.stderr or "")[-1500:] + (done.stdout or "")[-500:]).strip()
                log(f"  {self.op} #{n}: FAILED (exit {done.returncode}) after {seconds:.1f} s: {row['error'][-300:]}")
            elif self.op == "refresh":
                row.update({"online_version": answer.get("version"), "mode": answer.get("mode"), "rows": answer.get("rows"),
                            "removed_versions": answer.get("removed_versions")})
                log(f"  refresh #{n}: online version {row['online_version']} ({row['rows']} rows) in {seconds:.1f} s, "
                    f"removed {row['removed_versions'] or '-'}")
            else:
                row.update({"version": answer.get("version"), "published": answer.get("published"), "reason": answer.get("reason"),
                            "smoke": answer.get("smoke")})
                log(f"  publish #{n}: Triton version {row['version']} ({row['reason']}) in {seconds:.1f} s")
            self.runs.append(row)
            n += 1


# --- the run ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("-k", type=int, default=10, help="items per request")
    parser.add_argument("--refresh-every", type=float, default=60.0, help="seconds between online refreshes (0: none)")
    parser.add_argument("--publish-every", type=float, default=180.0, help="seconds between publishes (0: none)")
    parser.add_argument("--gc-grace-seconds", type=float, default=None,
                        help="online versions retired longer than this are collected (default: --refresh-every)")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=400_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-serving",
                        help="the catalogue bench/serving.py builds (kept and reused)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch home (the stack is stopped anyway)")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    if not 1 <= args.concurrency <= 256:
        parser.error("--concurrency must be between 1 and 256")
    if not 1 <= args.k <= 100:
        parser.error("-k must be between 1 and 100")
    for flag, value in (("--refresh-every", args.refresh_every), ("--publish-every", args.publish_every)):
        if value != 0 and value < 10:
            parser.error(f"{flag} must be 0 (never) or at least 10 seconds")
    grace = args.gc_grace_seconds if args.gc_grace_seconds is not None else (args.refresh_every or 3600.0)
    if grace < 0:
        parser.error("--gc-grace-seconds must be >= 0")
    seconds = args.minutes * 60

    began_all = time.perf_counter()
    built = build_catalogue(args.work, args.items, args.users, args.interactions, 64)

    import pandas as pd

    from recsys import jobs
    from recsys.serving.client import RecommendClient
    from recsys.serving.history import read_history

    scratch = Path(tempfile.mkdtemp(prefix="recsys-bench-soak-"))
    # DAGs stay paused (Airflow's default, said out loud): nothing but the soak's own operations runs
    settings = scratch_stack(scratch / "home", extra_env={"RECSYS_ONLINE_GC_GRACE_SECONDS": str(int(grace)),
                                                         "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"})
    os.environ.update(settings.as_env())
    env = dict(os.environ)
    CLI_ENV.update(env)
    result: dict[str, Any] = {
        "benchmark": "soak",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": loadavg(),
        "settings": {"minutes": args.minutes, "concurrency": args.concurrency, "k": args.k,
                     "refresh_every_s": args.refresh_every, "publish_every_s": args.publish_every,
                     "online_gc_grace_s": grace, "unknown_user_share": UNKNOWN_USER_SHARE,
                     "triton_instances": settings.triton_instances, "triton_batch_delay_us": settings.triton_batch_delay_us,
                     "triton_keep_versions": settings.triton_keep_versions},
        "catalogue": {"items": built["items"], "users": built["users"], "interactions": built["interactions"]},
        "goals": {"failed_requests": 0, "rss_growth_below": RSS_GOAL},
    }
    log(f"soak: {args.minutes:g} min at concurrency {args.concurrency}, refresh every {args.refresh_every:g} s, publish "
        f"every {args.publish_every:g} s; home {settings.home}, load {loadavg()}")
    load: Optional[Load] = None
    try:
        log("recsys stack up (every service)")
        began = time.perf_counter()
        recsys_cli("stack", "up", stream=True)
        result["stack_up_seconds"] = round(time.perf_counter() - began, 1)

        log("a served champion through the product's pipeline")
        timings: dict[str, float] = {}
        params = jobs.training_params({"epochs": 1, "embedding_dim": 64, "batch_size": 4096})
        landing = Path(built["data_dir"]).parents[1] / "input"  # what build_catalogue generated
        served = serve_champion(landing, params, f"bench_soak/{time.strftime('%Y%m%dT%H%M%S')}",
                                "bench/soak.py", env, timings)
        result["setup"] = {"timings": timings, "train_params": params, "data_version": served["data"]["data_version"],
                           "feature_version": served["features"]["feature_version"], "mlflow_run_id": served["trained"]["run_id"],
                           "gate": served["gate"]["decisions"], "triton_version": served["published"]["version"]}
        if not served["gate"]["new_champion"]:
            raise SystemExit(f"the champion gate did not promote the trained run: {served['gate']['decisions']}")

        users = pd.read_parquet(Path(served["data"]["path"]) / "users.parquet", columns=["user_id"])["user_id"].tolist()
        with RecommendClient(settings) as probe:  # the served model answers before anything is measured
            first = probe.recommend(users[0], args.k)
        if len(first) != args.k:
            raise SystemExit(f"the served model answered {len(first)} items instead of {args.k} before the soak")

        status = json_of(recsys_cli("stack", "status", "--json").stdout) or {}
        result["stack_at_start"] = {name: {"answering": s.get("answering"), "pid": s.get("pid")} for name, s in status.items()}
        result["memory_at_start"] = memory(settings, detail=True)
        result["redis_memory_at_start"] = redis_memory(settings)
        result["load_average_before_load"] = loadavg()
        log("RSS at start: " + ", ".join(f"{n} {m['rss_mb']:.0f} MB" for n, m in result["memory_at_start"].items()))

        # -- the soak
        log(f"load: {args.concurrency} clients for {args.minutes:g} min")
        load = Load(settings, users, args.k, args.concurrency)
        operators = []
        if args.refresh_every:
            operators.append(Operator("refresh", ["online", "refresh", "--force"], args.refresh_every, seconds, load))
        if args.publish_every:
            operators.append(Operator("publish", ["serving", "publish", "--force"], args.publish_every, seconds, load))
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        load.start()
        for operator in operators:
            operator.start()
        samples: list[dict[str, Any]] = []
        tick, last = 10.0, 0.0
        overrun_logged = False
        while True:
            # the load goes on past the end until every scheduled operation is done: each one is measured
            # under load (one that overran its interval delays the next)
            now = time.perf_counter() - load.started
            pending = [op.op for op in operators if not op.finished.is_set()]
            if now >= seconds and (not pending or now >= seconds + 900):
                break
            if now >= seconds and not overrun_logged:
                log(f"  {now:5.0f} s: the load goes on until the scheduled {' and '.join(pending)} runs are done")
                overrun_logged = True
            time.sleep(tick - (now % tick) if now >= seconds else min(tick - (now % tick), seconds - now))
            now = time.perf_counter() - load.started
            window = stats(*load.drain(), now - last)
            total = sum(len(rows) for rows in load.done)
            failed = sum(len(rows) for rows in load.failed)
            log(f"  {now:5.0f} s: {total:,} requests, {failed} failed; last {now - last:.0f} s: {window['per_s']:.0f}/s, "
                f"p50 {window.get('p50_ms', 0):.1f} ms, p99 {window.get('p99_ms', 0):.1f} ms; load {loadavg()[0]}")
            last = now
            if not samples or now - samples[-1]["t_s"] >= 29.5:
                sampled = memory(settings, detail=True)
                samples.append({"t_s": round(now, 1), "load_average": loadavg(),
                                "rss_mb": {n: m["rss_mb"] for n, m in sampled.items()},
                                "triton_processes_mb": {str(p["pid"]): p["rss_mb"] for p in sampled["triton"]["each"]},
                                "redis": redis_memory(settings)})
        load.join()
        ended = time.perf_counter() - load.started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        log("load stopped; waiting for running operations")
        for operator in operators:
            operator.join()

        # -- figures: the memory when the load stopped, and once replaced versions are unloaded (the end)
        result["memory_when_load_stopped"] = memory(settings)
        result["settle_seconds"] = settle(settings, {n: m["processes"] for n, m in result["memory_at_start"].items()})
        if result["settle_seconds"] is None:
            log("warning: some service still runs more processes than at the start after 180 s")
        result["memory_at_end"] = memory(settings, detail=True)
        result["redis_memory_at_end"] = redis_memory(settings)
        result["load_average_at_end"] = loadavg()
        minutes = []
        for m in range(int(-(-ended // 60))):
            since, until = 60.0 * m, min(60.0 * (m + 1), ended)
            row = {"minute": m + 1, **stats(*load.window(since, until), until - since)}
            for operator in operators:
                row[PLURAL[operator.op]] = [
                    {k: r.get(k) for k in ("n", "started_s", "seconds", "exit")} for r in operator.runs
                    if since <= r["started_s"] < until]
            row["load_average"] = next((s["load_average"] for s in samples if s["t_s"] >= until - 1), loadavg())
            minutes.append(row)
        result["minutes"] = minutes
        result["total"] = stats(*load.window(0.0, ended + 1), ended)
        result["total"]["seconds"] = round(ended, 1)
        failures = sorted((f for rows in load.failed for f in rows), key=lambda f: f[0])
        by_message: dict[str, int] = {}
        for _, _, message in failures:
            by_message[message] = by_message.get(message, 0) + 1
        result["failures"] = {"count": len(failures), "by_message": by_message,
                              "first": [{"at_s": round(at, 2), "user": str(user), "error": msg} for at, user, msg in failures[:20]]}
        result["operations"] = {operator.op: operator.runs for operator in operators}
        result["samples"] = samples
        growth = {}
        for name, start in result["memory_at_start"].items():
            end = result["memory_at_end"].get(name, {}).get("rss_mb")
            first_minute = next((s["rss_mb"].get(name) for s in samples if s["t_s"] >= 59), None)
            growth[name] = {"start_mb": start["rss_mb"], "after_1_min_mb": first_minute, "end_mb": end,
                            "growth_pct": round(100 * (end - start["rss_mb"]) / start["rss_mb"], 1) if end and start["rss_mb"] else None,
                            "growth_after_1_min_pct": round(100 * (end - first_minute) / first_minute, 1) if end and first_minute else None}
            growth[name]["within_goal"] = growth[name]["growth_pct"] is not None and growth[name]["growth_pct"] < 100 * RSS_GOAL
        result["rss"] = growth
        result["driver_cpu_seconds"] = round((cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime), 1)
        history = read_history(settings.triton_repo)
        result["publish_history"] = [{k: e.get(k) for k in ("action", "version", "status", "error", "forced", "at")} for e in history]
        online = json_of(recsys_cli("online", "status", check=False).stdout) or {}
        result["online_status_at_end"] = {"current": (online.get("current") or {}).get("version"), "pinned": online.get("pinned"),
                                          "retired": online.get("retired"), "writing": online.get("writing")}
        status = json_of(recsys_cli("stack", "status", "--json", check=False).stdout) or {}
        result["stack_at_end"] = {name: {"answering": s.get("answering"), "pid": s.get("pid")} for name, s in status.items()}
        result["goals_met"] = {"no_failed_requests": len(failures) == 0,
                               "rss_growth": all(g["within_goal"] for g in growth.values())}
    finally:
        if load is not None:
            load.stop.set()
        log("recsys stack down")
        recsys_cli("stack", "down", check=False, stream=True)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            log(f"kept {scratch}")
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["seconds_in_all"] = round(time.perf_counter() - began_all, 1)
    from recsys.data.versioning import write_json_atomic

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    t = result["total"]
    log(f"{t['requests']:,} requests in {t['seconds']:.0f} s ({t['per_s']}/s), {result['failures']['count']} failed, "
        f"p50 {t.get('p50_ms')} ms, p99 {t.get('p99_ms')} ms")
    for row in result["minutes"]:
        ops = "; ".join(f"{key} {', '.join(str(r['seconds']) + ' s' for r in row[key])}" for key in ("refreshes", "publishes")
                        if row.get(key))
        log(f"  minute {row['minute']:2d}: {row['requests']:6,} requests, {row['failed']} failed, p50 {row.get('p50_ms')} ms, "
            f"p99 {row.get('p99_ms')} ms, load {row['load_average'][0]}{'; ' + ops if ops else ''}")
    for name, g in result["rss"].items():
        log(f"  RSS {name:22s} {g['start_mb']:8.1f} -> {g['end_mb']:8.1f} MB ({g['growth_pct']:+.1f}%)")
    log(f"wrote {args.out}")
    if result["failures"]["count"]:
        log(f"{result['failures']['count']} requests failed: {result['failures']['by_message']}")


if __name__ == "__main__":
    main()
