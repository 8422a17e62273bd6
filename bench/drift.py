"""Drift check benchmark: one Evidently drift check (``recsys.monitoring.drift.measure_drift``) on
1M reference rows and 1M current rows x 20 features (12 categorical, 8 continuous), synthetic frames
with drift in 5 features. Writes bench/results/drift.json.

    .envs/control/bin/python bench/drift.py [--rows 1000000] [--repeats 3]

Figures (medians of ``--repeats``):
- ``check``: ``measure_drift`` on the full windows (what a check costs with ``RECSYS_DRIFT_MAX_ROWS=0``);
- ``check_sampled``: the same after the windows' seeded sample down to ``RECSYS_DRIFT_MAX_ROWS``'s default;
- ``html``: writing the HTML report of one check;
- ``floor``: pandas alone counting each categorical column's values and binning each continuous one
  in both frames (the least any per-feature comparison must do), measured in the same run, so the
  ratio ``check / floor`` is what to drive down, whatever the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
N_CATEGORICAL, N_CONTINUOUS, N_DRIFTED = 12, 8, 5


def make_frames(rows: int, seed: int = 0):
    """Reference and current frames; the first N_DRIFTED features (mixed kinds) shift in current."""
    import numpy as np
    import pandas as pd

    from recsys.monitoring.windows import FeatureColumns

    rng = np.random.default_rng(seed)
    categorical = [f"cat_{i:02d}" for i in range(N_CATEGORICAL)]
    continuous = [f"num_{i:02d}" for i in range(N_CONTINUOUS)]
    drifted = set(categorical[:3] + continuous[:2])
    frames = []
    for shifted in (False, True):
        data = {}
        for i, column in enumerate(categorical):
            vocabulary = np.array([f"v{j}" for j in range(5 + 4 * i)], dtype=object)
            weights = np.linspace(1.0, 3.0 if shifted and column in drifted else 1.0, len(vocabulary))
            data[column] = vocabulary[rng.choice(len(vocabulary), rows, p=weights / weights.sum())]
        for column in continuous:
            shift = 0.5 if shifted and column in drifted else 0.0
            data[column] = rng.normal(shift, 1.0, rows)
        frames.append(pd.DataFrame(data))
    return frames[0], frames[1], FeatureColumns(categorical, continuous), sorted(drifted)


def floor(reference, current, columns) -> None:
    import numpy as np

    for frame in (reference, current):
        for column in columns.categorical:
            frame[column].value_counts()
        for column in columns.continuous:
            np.histogram(frame[column].to_numpy(), bins=100)


def timed(fn, *args, **kwargs):
    began = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in each window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "drift.json")
    args = parser.parse_args()
    if args.rows < 1000 or args.repeats < 1:
        parser.error("--rows must be >= 1000 and --repeats >= 1")

    from recsys.monitoring.drift import measure_drift
    from recsys.settings import Settings

    load_start = os.getloadavg()
    (reference, current, columns, expected), gen_seconds = timed(make_frames, args.rows)
    print(f"frames: 2 x {args.rows} rows x {len(columns.all)} features in {gen_seconds:.1f}s", flush=True)
    measure_drift(reference.head(5000), current.head(5000), columns)  # imports and first-call setup, not timed

    max_rows = Settings.__dataclass_fields__["drift_max_rows"].default
    checks, sampled, floors, verdicts, snapshot = [], [], [], None, None
    for repeat in range(args.repeats):
        floors.append(timed(floor, reference, current, columns)[1])
        (verdicts, snapshot), seconds = timed(measure_drift, reference, current, columns)
        checks.append(seconds)

        def sample_then_check():
            ref = reference.sample(n=min(max_rows, len(reference)), random_state=42)
            cur = current.sample(n=min(max_rows, len(current)), random_state=42)
            return measure_drift(ref, cur, columns)

        sampled.append(timed(sample_then_check)[1])
        print(f"repeat {repeat + 1}: check {seconds:.2f}s, sampled {sampled[-1]:.2f}s, floor {floors[-1]:.2f}s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        _, html_seconds = timed(snapshot.save_html, str(Path(tmp) / "report.html"))
        html_bytes = (Path(tmp) / "report.html").stat().st_size

    found = sorted(v.feature for v in verdicts if v.drifted)
    check, sampled_check, floor_s = (statistics.median(x) for x in (checks, sampled, floors))
    total_rows = 2 * args.rows
    result = {
        "rows_per_window": args.rows,
        "features": {"categorical": N_CATEGORICAL, "continuous": N_CONTINUOUS},
        "check": {"seconds": round(check, 3), "rows_per_second": round(total_rows / check),
                  "runs": [round(x, 3) for x in checks]},
        "check_sampled": {"max_rows": max_rows, "seconds": round(sampled_check, 3),
                          "rows_per_second": round(total_rows / sampled_check), "runs": [round(x, 3) for x in sampled]},
        "html": {"seconds": round(html_seconds, 3), "bytes": html_bytes},
        "floor": {"seconds": round(floor_s, 3), "runs": [round(x, 3) for x in floors]},
        "check_over_floor": round(check / floor_s, 2),
        "methods": sorted({v.method for v in verdicts}),
        "drifted_expected": expected,
        "drifted_found": found,
        "rows_per_second_counts": "reference + current rows",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
