"""``recsys etl``: turn a data version into a feature version (NVTabular, Merlin runtime).

Imports nothing heavy at module level: the control plane builds the same parser and, lacking
NVTabular, re-runs the command with the Merlin interpreter.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "etl",
        help="NVTabular ETL: data version -> feature version",
        description="Split a data version into training and validation, fit the user/item NVTabular workflows "
        "and write a feature version (docs/layouts.md, section 3). Re-running on the same data is a no-op.",
    )
    parser.add_argument("--data", required=True, type=Path, help="data version folder (<home>/data/<version>)")
    parser.add_argument("--features-root", type=Path, default=None, help="default: <home>/features")
    parser.add_argument("--validation-split", choices=("auto", "time", "user"), default=None,
                        help="time: the last N days; user: each user's newest fraction; auto: time when the data "
                        "supports it (default: settings)")
    parser.add_argument("--validation-days", type=int, default=None, help="time split: the last N days (default: settings)")
    parser.add_argument("--validation-fraction", type=float, default=None,
                        help="user split: each user's newest fraction (default: settings)")
    parser.add_argument(
        "--dask-scheduler",
        default=None,
        help="Dask scheduler address to run NVTabular on (default: RECSYS_DASK_SCHEDULER_ADDRESS, else the embedded "
        "cluster with RECSYS_TOPOLOGY=distributed, else local threads)",
    )
    parser.set_defaults(func=_run_etl)


def _run_etl(args: argparse.Namespace) -> int:
    from recsys.runtime import in_merlin_runtime, run_in_merlin_runtime
    from recsys.settings import get_settings

    settings = get_settings()
    features_root = args.features_root or settings.features_root
    from recsys.features.split import ValidationSplit

    default = ValidationSplit.from_settings(settings)
    split = ValidationSplit(
        args.validation_split or default.kind,
        args.validation_days if args.validation_days is not None else default.days,
        args.validation_fraction if args.validation_fraction is not None else default.fraction,
    )
    scheduler = args.dask_scheduler or settings.dask_scheduler
    if not in_merlin_runtime():
        argv = ["etl", "--data", str(args.data.resolve()), "--features-root", str(Path(features_root).resolve())]
        argv += ["--validation-split", split.kind, "--validation-days", str(split.days),
                 "--validation-fraction", str(split.fraction)]
        if scheduler:
            argv += ["--dask-scheduler", scheduler]
        return run_in_merlin_runtime(argv)

    from recsys.features.etl import run_etl

    result = run_etl(args.data, Path(features_root), split, scheduler)
    print(f"feature version {result.version}: {result.path}")
    return 0
