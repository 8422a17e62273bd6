"""The demo loop on the distributed topology beside the embedded one: same data, same machine, same run.

    .envs/control/bin/python bench/topology.py            # the demo's own data size (two trainings)
    .envs/control/bin/python bench/topology.py --quick    # a smaller data set

Each topology gets a scratch home on free ports (``RECSYS_TOPOLOGY=embedded`` then ``distributed``) and runs
``recsys demo`` as a user runs it, a child process whose step lines (``==> 3/10 ...``) are timed as they appear:
starting the stack, the ETL (NVTabular: local threads or the Dask cluster), training (the LocalExecutor, or the
Celery worker of the ``gpu`` queue), publishing (one Triton or both replicas), recommendations, live events and
the drift loop (a retrain and a second publish). The stack is stopped afterwards. The demo's own output goes to
``<scratch>/<topology>/demo.log``. Writes ``bench/results/topology.json`` (``topology-quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONTROL_BIN, RESULTS, loadavg, log, scratch_stack  # noqa: E402

STEP = re.compile(r"^==> (?:(\d+)/\d+ )?(.*)$")
ANSWERING = re.compile(r"^  (\S+) answering after ([\d.]+) s$")
STEP_NAMES = {1: "stack up", 2: "landing data", 3: "etl", 4: "train", 5: "publish", 6: "recommend", 7: "live events",
              8: "drifted batch", 9: "drift checks + retrain", 10: "new champion serves"}


def run_demo(topology: str, scratch: Path, demo_args: list[str], timeout: float) -> dict:
    """``recsys demo`` in a scratch home of ``topology``; the seconds of each step, the stack's start per service."""
    home = scratch / topology
    home.mkdir(parents=True)
    scratch_stack(home / "home", topology=topology)
    env = dict(os.environ)
    demo_log = home / "demo.log"
    log(f"{topology}: recsys demo {' '.join(demo_args)} (output in {demo_log})")
    marks: list[tuple[str, float]] = []
    services: dict[str, float] = {}
    began = time.monotonic()
    with open(demo_log, "w") as out:
        proc = subprocess.Popen([str(CONTROL_BIN / "recsys"), "demo", *demo_args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                now = time.monotonic() - began
                step = STEP.match(line.rstrip("\n"))
                if step:
                    name = STEP_NAMES.get(int(step.group(1)), step.group(2)) if step.group(1) else "done"
                    marks.append((name, now))
                    log(f"  {topology}: {name} at {now:.0f} s")
                answering = ANSWERING.match(line.rstrip("\n"))
                if answering:
                    services[answering.group(1)] = float(answering.group(2))
                if now > timeout:
                    proc.kill()
                    break
            code = proc.wait(timeout=60)
        finally:
            total = time.monotonic() - began
            subprocess.run([str(CONTROL_BIN / "recsys"), "stack", "down"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT, timeout=300)
    steps = {name: round(marks[i + 1][1] - at, 1) for i, (name, at) in enumerate(marks[:-1])}
    result = {"exit": code, "total_seconds": round(total, 1), "steps_seconds": steps, "services_answering_seconds": services,
              "log": str(demo_log)}
    log(f"{topology}: exit {code} in {total:.0f} s: {steps}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 users, 20,000 interactions")
    parser.add_argument("--topologies", default="embedded,distributed")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per demo")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the scratch homes (default: a temporary one)")
    args = parser.parse_args()

    demo_args = ["--users", "1000", "--items", "300", "--interactions", "20000", "--days", "21"] if args.quick else []
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="recsys-bench-topology-"))
    report = {"benchmark": "topology", "quick": args.quick, "demo_args": demo_args, "cpus": os.cpu_count(),
              "loadavg_before": loadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "topologies": {}}
    for topology in args.topologies.split(","):
        report["topologies"][topology] = run_demo(topology, scratch, demo_args, args.timeout)
        report[f"loadavg_after_{topology}"] = loadavg()
    runs = report["topologies"]
    if {"embedded", "distributed"} <= set(runs) and all(r["exit"] == 0 for r in runs.values()):
        embedded, distributed = runs["embedded"], runs["distributed"]
        report["distributed_over_embedded"] = {
            "total": round(distributed["total_seconds"] / embedded["total_seconds"], 2),
            **{step: round(distributed["steps_seconds"][step] / seconds, 2)
               for step, seconds in embedded["steps_seconds"].items()
               if seconds > 0 and step in distributed["steps_seconds"]},
        }
    out = RESULTS / ("topology-quick.json" if args.quick else "topology.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out}")
    return 0 if all(r["exit"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
