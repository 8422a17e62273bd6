"""Run the benchmarks, each with its interpreter and prerequisites; every one writes its JSON into bench/results/.

    python3 bench/run_all.py                   # all of them, full (well over an hour on 2 cores)
    python3 bench/run_all.py serving events    # some of them, in the order given
    python3 bench/run_all.py --quick           # each one's quick mode: bench/results/<name>-quick.json (not committed)
    python3 bench/run_all.py --list            # what would run: interpreter, prerequisites, time, output
    make bench BENCH=serving,events QUICK=1    # the same through make (builds the environments first)

The list below is the one place that says, per benchmark, which environment's Python runs it, which
other environments and Debian tools it needs, where its data comes from, and what its quick mode is.
Before running, what is missing is installed: the project's environments through ``make`` (control
and merlin: ``make envs``; peers: ``make peers``), Debian packages with ``apt-get`` (as root, or
through passwordless ``sudo -n``; otherwise a warning, and the benchmarks that need them are reported
as not run). MovieLens ml-latest-small cannot be installed (its licence keeps it out of the
repository): ``--movielens PATH`` or ``BENCH_MOVIELENS`` points at it (default
``../shared/data/ml-latest-small``). A benchmark that fails does not stop the others; the summary at
the end names each one's outcome and output, and the exit status is 1 if any did not succeed.

Only the standard library: this script runs with any Python 3.9+.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
ENVS = ROOT / ".envs"
DEFAULT_MOVIELENS = ROOT.parent / "shared" / "data" / "ml-latest-small"

ENV_TARGETS = {"control": "envs", "merlin": "envs", "peers": "peers"}
"""Environment -> the make target that builds it."""
TOOLS = {"redis-benchmark": "redis-tools", "wrk": "wrk"}
"""Command -> the Debian package that installs it."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    """File under bench/."""
    runtime: str
    """The environment whose Python runs the script."""
    about: str
    minutes: str
    """A full run's time on the 2-core development machine."""
    quick: tuple[str, ...]
    """The arguments of its quick mode."""
    quick_minutes: str
    first_time: str = ""
    """What the first run on a machine adds (data it builds once and reuses)."""
    envs: tuple[str, ...] = ()
    """Other environments it starts (as subprocesses)."""
    quick_envs: Optional[tuple[str, ...]] = None
    """The same in quick mode, when it differs."""
    tools: tuple[str, ...] = ()
    """Commands it runs (keys of TOOLS)."""
    movielens: bool = False
    """Reads MovieLens ml-latest-small (passed as --data)."""
    args: tuple[str, ...] = ()
    """Arguments of every run, quick or full (a mode of a script another benchmark runs too)."""

    def environments(self, quick: bool) -> list[str]:
        others = self.quick_envs if quick and self.quick_envs is not None else self.envs
        return list(dict.fromkeys((self.runtime, *others)))

    def output(self, quick: bool) -> Path:
        return RESULTS / (f"{self.name}-quick.json" if quick else f"{self.name}.json")

    def command(self, quick: bool, movielens: Path) -> list[str]:
        argv = [str(python(self.runtime)), str(BENCH / self.script), *self.args]
        if quick:
            argv += self.quick
        if self.movielens:
            argv += ["--data", str(movielens)]
        return argv + ["--out", str(self.output(quick))]


BENCHMARKS = (
    Benchmark("quality", "quality.py", "control", "the product end to end on MovieLens beside EASE and implicit ALS",
              "10", ("--quick",), "3", envs=("merlin", "peers"), movielens=True),
    Benchmark("peer_fusion", "peer_fusion.py", "control", "a blend of EASE and ALS on quality's split",
              "1", (), "1", envs=("peers",), movielens=True),
    Benchmark("drift", "drift.py", "control", "one Evidently drift check, 2 x 1M rows x 20 features",
              "10", ("--rows", "100000", "--repeats", "1"), "1"),
    Benchmark("offline", "offline.py", "merlin", "generation, ingest, NVTabular ETL beside a pyarrow floor, training throughput",
              "5", ("--interactions", "1000000", "--train-interactions", "200000"), "2"),
    Benchmark("dask_etl", "dask_etl.py", "control", "the NVTabular ETL on the distributed topology's Dask cluster "
              "beside local threads", "1", ("--quick",), "1", envs=("merlin",), movielens=True),
    Benchmark("online_store", "online_store.py", "control", "Redis online store: refresh beside redis-benchmark, "
              "reader latency during paced and unpaced refreshes, Feast", "5", ("--users", "10000", "--items", "1000",
              "--interactions", "100000", "--skip-feast"), "3", envs=("peers",), quick_envs=(), tools=("redis-benchmark",)),
    Benchmark("serving", "serving.py", "control", "the four-stage model under perf_analyzer (10k and 100k items)",
              "10", ("--items", "10000", "--quick", "--modes", "batched"), "3",
              first_time="building the catalogues into /tmp/recsys-bench-serving: ~8 min (10k only: ~4)", envs=("merlin",)),
    Benchmark("serving_replicas", "serving.py", "control", "serving throughput with two Triton replicas beside one "
              "(the distributed topology's), same run, 3 rounds in turn", "8", ("--quick",), "5",
              first_time="the 10k catalogue of serving, if not built: ~4 min", envs=("merlin",),
              args=("--replicas", "--items", "10000", "--concurrency", "4,16")),
    Benchmark("events", "events.py", "control", "live events: accept rate, accept-to-visible, serving while events flow, "
              "the HTTP API", "12", ("--quick",), "5", first_time="the 10k catalogue of serving, if not built: ~4 min",
              envs=("merlin",), tools=("redis-benchmark", "wrk")),
    Benchmark("redis_cluster", "redis_cluster.py", "control", "the online store on the distributed topology's Redis "
              "Cluster: failover window (kill -9 of its primary), reads beside one Redis", "2", ("--quick",), "1"),
    Benchmark("redis_memory", "redis_memory.py", "control", "the embedded Redis' memory over 40 refreshes: bounded or "
              "growing", "3", ("--quick",), "1"),
    Benchmark("topology", "topology.py", "control", "`recsys demo` on the distributed topology (Postgres, Celery, Redis "
              "Cluster, Dask, two Tritons) beside the embedded one", "16", ("--quick",), "9", envs=("merlin",)),
    Benchmark("topology_startup", "topology_startup.py", "control", "Airflow + MLflow start time on the distributed "
              "topology (Postgres, Celery workers) beside the embedded one", "6", ("--rounds", "1"), "2"),
    Benchmark("soak", "soak.py", "control", "10 minutes at concurrency 16 while the online store refreshes every "
              "minute and a publish every 3", "17", ("--minutes", "2", "--refresh-every", "30", "--publish-every", "60"), "9",
              first_time="the 10k catalogue of serving, if not built: ~4 min", envs=("merlin",)),
)
BY_NAME = {b.name: b for b in BENCHMARKS}


def python(env: str) -> Path:
    return ENVS / env / "bin" / "python"


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


# --- prerequisites ---------------------------------------------------------------------------------
def ensure_envs(names: list[str]) -> dict[str, str]:
    """Build the missing environments through make; returns {env: problem} for those still missing."""
    problems = {}
    for target in dict.fromkeys(ENV_TARGETS[n] for n in names if not python(n).exists()):
        say(f"==> building the environments of `make {target}` (missing: "
            f"{', '.join(n for n in names if ENV_TARGETS[n] == target and not python(n).exists())})")
        done = subprocess.run(["make", "-C", str(ROOT), target])
        if done.returncode != 0:
            say(f"warning: `make {target}` failed (exit {done.returncode})")
    for name in names:
        if not python(name).exists():
            problems[name] = f"{python(name)} missing (`make {ENV_TARGETS[name]}` did not build it)"
    return problems


def ensure_tools(commands: list[str]) -> dict[str, str]:
    """Install the missing Debian tools with apt-get (root, or passwordless sudo); returns {command: problem}."""
    missing = [c for c in commands if shutil.which(c) is None]
    if not missing:
        return {}
    packages = sorted({TOOLS[c] for c in missing})
    say(f"==> installing Debian's {' '.join(packages)} (for {', '.join(missing)})")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if shutil.which("apt-get") is None:
        why = "no apt-get on this machine"
    elif sudo and shutil.which("sudo") is None:
        why = "not root and no sudo"
    else:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        ok = (subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env).returncode == 0
              and subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *packages], env=env).returncode == 0)
        why = "" if ok else ("apt-get failed" if not sudo else "apt-get through `sudo -n` failed (needs root or passwordless sudo)")
    problems = {}
    for command in missing:
        if shutil.which(command) is None:
            problems[command] = (f"{command} not found and could not be installed ({why or 'still missing after apt-get'}): "
                                 f"install Debian's {TOOLS[command]} (`apt-get install {TOOLS[command]}`)")
    if problems:
        say("warning: " + "; ".join(problems.values()))
    return problems


def prerequisites(chosen: list[Benchmark], quick: bool, movielens: Path) -> dict[str, list[str]]:
    """Install what the chosen benchmarks need; returns {benchmark: [what is still missing]}."""
    env_problems = ensure_envs(sorted({e for b in chosen for e in b.environments(quick)}))
    tool_problems = ensure_tools(sorted({t for b in chosen for t in b.tools}))
    movielens_problem = None
    if any(b.movielens for b in chosen) and not (movielens / "ratings.csv").is_file():
        movielens_problem = (f"MovieLens ml-latest-small not found at {movielens} (no ratings.csv): download "
                             "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip, unzip it outside "
                             "the repository and pass --movielens PATH (or set BENCH_MOVIELENS)")
        say(f"warning: {movielens_problem}")
    missing = {}
    for b in chosen:
        problems = [env_problems[e] for e in b.environments(quick) if e in env_problems]
        problems += [tool_problems[t] for t in b.tools if t in tool_problems]
        if b.movielens and movielens_problem:
            problems.append(movielens_problem)
        if problems:
            missing[b.name] = problems
    return missing


# --- running ---------------------------------------------------------------------------------------
def run_one(b: Benchmark, quick: bool, movielens: Path) -> tuple[str, str]:
    """Run one benchmark, its output streamed; returns (status, detail)."""
    out = b.output(quick)
    command = b.command(quick, movielens)
    began = time.time()
    tail: collections.deque[str] = collections.deque(maxlen=15)
    say(f"$ {' '.join(os.path.relpath(a, ROOT) if a.startswith(str(ROOT)) else a for a in command)}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines would drown the progress
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(f"  {b.name} | {line}")
            sys.stdout.flush()
            tail.append(line.rstrip())
        code = proc.wait()
    if code != 0:
        return "FAILED", f"exit {code}; last lines:\n" + "\n".join(f"      {line}" for line in tail)
    if not out.exists() or out.stat().st_mtime < began:
        return "FAILED", f"exited 0 but did not write {out.relative_to(ROOT)}"
    return "ok", str(out.relative_to(ROOT))


def describe(b: Benchmark, quick: bool, movielens: Path) -> str:
    needs = [f"env {e}" for e in b.environments(quick)[1:]] + [f"{t} (Debian {TOOLS[t]})" for t in b.tools]
    if b.movielens:
        needs.append(f"MovieLens at {movielens}")
    minutes = f"~{b.quick_minutes if quick else b.minutes} min" + (f" (first run: + {b.first_time})" if b.first_time else "")
    return (f"{b.name:13s} .envs/{b.runtime}/bin/python bench/{b.script}{' ' + ' '.join(b.quick) if quick and b.quick else ''}\n"
            f"{'':13s} {b.about}; {minutes}; needs {', '.join(needs) or 'nothing else'}; "
            f"-> {b.output(quick).relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="benchmarks: " + ", ".join(BY_NAME))
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run, in this order (default: all); "
                        "commas work too (serving,events)")
    parser.add_argument("--quick", action="store_true", help="each benchmark's quick mode; writes <name>-quick.json")
    parser.add_argument("--list", action="store_true", help="show what would run and exit")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first benchmark that fails")
    parser.add_argument("--movielens", type=Path, default=Path(os.environ.get("BENCH_MOVIELENS") or DEFAULT_MOVIELENS),
                        help="ml-latest-small folder for quality and peer_fusion (default: $BENCH_MOVIELENS or %(default)s)")
    args = parser.parse_args()
    names = [n.strip() for arg in args.names for n in arg.split(",") if n.strip()] or list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from: {', '.join(BY_NAME)}")
    chosen = [BY_NAME[n] for n in dict.fromkeys(names)]
    movielens = args.movielens.expanduser().resolve()

    mode = "quick" if args.quick else "full"
    say(f"{len(chosen)} benchmark(s), {mode} mode, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}:")
    for b in chosen:
        print(describe(b, args.quick, movielens))
    if args.list:
        return 0

    missing = prerequisites(chosen, args.quick, movielens)
    outcomes: list[tuple[Benchmark, str, float, str]] = []
    for n, b in enumerate(chosen, 1):
        say(f"==> [{n}/{len(chosen)}] {b.name}: {b.about} (~{b.quick_minutes if args.quick else b.minutes} min)")
        if b.name in missing:
            detail = "; ".join(missing[b.name])
            say(f"<== {b.name}: NOT RUN: {detail}")
            outcomes.append((b, "NOT RUN", 0.0, detail))
            continue
        began = time.time()
        try:
            status, detail = run_one(b, args.quick, movielens)
        except KeyboardInterrupt:
            outcomes.append((b, "INTERRUPTED", time.time() - began, ""))
            say(f"<== {b.name}: interrupted")
            break
        seconds = time.time() - began
        outcomes.append((b, status, seconds, detail))
        say(f"<== {b.name}: {status} in {seconds:.0f} s: {detail}")
        if status != "ok" and args.fail_fast:
            break

    print()
    say(f"summary ({mode} mode):")
    for b, status, seconds, detail in outcomes:
        first, *rest = detail.splitlines() or [""]
        print(f"  {b.name:13s} {status:11s} {seconds:7.0f} s  {first}")
        for line in rest:
            print(line)
    for b in chosen[len(outcomes):]:
        print(f"  {b.name:13s} {'SKIPPED':11s} {'':9s}  (after a failure, --fail-fast)")
    failed = [b.name for b, status, _, _ in outcomes if status != "ok"] + [b.name for b in chosen[len(outcomes):]]
    if failed:
        say(f"{len(failed)} of {len(chosen)} did not succeed: {', '.join(failed)}")
        return 1
    say(f"all {len(chosen)} succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
