"""``recsys stack up | down | status``: the local services."""

from __future__ import annotations

import argparse
import json
import logging
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("stack", help="local services: up, down, status")
    sub = parser.add_subparsers(dest="stack_command", required=True)

    p_up = sub.add_parser("up", help="start the embedded services (idempotent) and wait until they answer")
    p_up.add_argument("--only", help="comma-separated subset, e.g. redis,mlflow")
    p_up.set_defaults(func=_up)

    p_down = sub.add_parser("down", help="stop the embedded services")
    p_down.add_argument("--only", help="comma-separated subset")
    p_down.set_defaults(func=_down)

    p_status = sub.add_parser("status", help="which services answer, where their logs are")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    p_status.set_defaults(func=_status)


def _log_progress() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll is noise


def _only(args: argparse.Namespace):
    return args.only.split(",") if args.only else None


def _up(args: argparse.Namespace) -> int:
    from recsys import stack
    from recsys.settings import get_settings

    _log_progress()
    settings = get_settings()
    started = time.monotonic()
    timings = stack.up(settings, _only(args))
    answered = ", ".join(f"{name} after {secs} s" for name, secs in timings.items())
    print(f"stack up in {time.monotonic() - started:.1f} s ({answered})")
    _print_table(stack.status(settings), settings.topology)
    return 0


def _down(args: argparse.Namespace) -> int:
    from recsys import stack
    from recsys.settings import get_settings

    _log_progress()
    stopped = stack.down(get_settings(), _only(args))
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def _status(args: argparse.Namespace) -> int:
    from recsys import stack
    from recsys.settings import get_settings

    report = stack.status(get_settings())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report, get_settings().topology)
    # Exit 1 when something does not answer, so scripts can wait on `recsys stack status`.
    return 0 if all(s["answering"] for s in report.values()) else 1


def _print_table(report: dict, topology: str) -> None:
    print(f"topology: {topology} (RECSYS_TOPOLOGY)")
    rows = [("SERVICE", "MODE", "ANSWERING", "PID", "URL", "LOG")]
    for name, s in report.items():
        rows.append(_row(name, s, s["url"]))
        for comp, c in s.get("components", {}).items():
            rows.append(_row(f"  {comp}", {"embedded": True, **c}, c.get("url", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1])
    airflow = report.get("airflow")
    if airflow:
        print(f"\nAirflow UI {airflow['url']}  user: {airflow['user']}  password: {airflow['password_file']}")
    api = report.get("api")
    if api:
        print(f"HTTP API   {api['url']}/docs  bearer token: {api['token_file']}")


def _row(name: str, s: dict, url: str) -> tuple[str, ...]:
    mode = "embedded" if s.get("embedded") else "external"
    return (name, mode, "yes" if s["answering"] else "no", str(s.get("pid") or "-"), url, s.get("log") or "-")
