"""``recsys drift``: run a drift check now, list the checks, show one, print the per-feature history."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("drift", help="feature drift checks", description=__doc__)
    sub = parser.add_subparsers(dest="drift_command", required=True)

    check = sub.add_parser("check", help="ingest the landing folder and run one drift check now")
    check.add_argument("--json", action="store_true", help="print the whole summary as JSON")
    check.set_defaults(func=_check)

    listing = sub.add_parser("list", help="the latest checks, newest first")
    listing.add_argument("-n", "--limit", type=int, default=20)
    listing.set_defaults(func=_list)

    show = sub.add_parser("show", help="one check's summary and where its HTML report is")
    show.add_argument("check_id")
    show.set_defaults(func=_show)

    history = sub.add_parser("history", help="per-feature drift score over time (one row per check)")
    history.set_defaults(func=_history)


def _check(args: argparse.Namespace) -> int:
    from recsys.monitoring.check import run_drift_check
    from recsys.monitoring.store import report_path
    from recsys.tracking.champions import NoChampionError

    try:
        result = run_drift_check()  # ingests the landing folder first (a no-op when unchanged)
    except NoChampionError as exc:
        print(f"no check: {exc}")
        return 0
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"check {result['check_id']}: {'RETRAIN' if result['trigger'] else 'no retrain'}; {result['reason']}")
        print(f"report: {report_path(result['check_id'])}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from recsys.monitoring.store import list_checks

    checks = list_checks(args.limit)
    if not checks:
        print("no drift checks yet")
    for c in checks:
        verdict = "RETRAIN" if c["trigger"] else ("drift" if c["drift"] else "ok")
        print(f"{c['check_id']}  {verdict:8} share {c['share']:.2f}  data {c['current_data_version']}  {c['reason']}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from recsys.monitoring.store import get_check, report_path

    c = get_check(args.check_id)
    print(f"check {c['check_id']} at {c['checked_at']}: {c['reason']}")
    print(f"champion {c['champion_versions']} (run {c['champion_run_id']}); MLflow run {c['mlflow_run_id']}")
    for name in ("reference", "current"):
        w = c[name]
        print(f"{name:9}  data {w['data_version']}  {w['start']} .. {w['end']}  {w['rows']} rows ({w['rows_compared']} compared)")
    for f in c["features"]:
        print(f"  {f['feature']:20} {f['kind']:11} {f['method']:28} score {f['score']:.4f}  "
              f"threshold {f['threshold']:.4f}  {'DRIFT' if f['drifted'] else ''}")
    print(f"report: {report_path(c['check_id'])}")
    return 0


def _history(args: argparse.Namespace) -> int:
    from recsys.monitoring.store import history_frame

    frame = history_frame()
    if frame.empty:
        print("no drift checks yet")
        return 0
    print(frame.pivot(index="check_id", columns="feature", values="score").round(4).to_string())
    return 0
