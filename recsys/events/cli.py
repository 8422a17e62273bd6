"""``recsys events``: the event worker, how fresh the event path is, refused inbox entries.

Imports nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from recsys.events.redis_log import RedisEventLog


def register(subparsers: argparse._SubParsersAction) -> None:
    events = subparsers.add_parser("events", help="live events: the event worker, status, refused inbox entries")
    sub = events.add_subparsers(dest="events_command", required=True)

    worker = sub.add_parser(
        "worker",
        help="run the event worker in the foreground (inbox validation, live layer, landing parts)",
        description="Validate the Redis inbox, apply the event log to the live layer and write it into the "
        "landing folder as parquet parts, exactly once, until SIGTERM / Ctrl-C (the part being written is "
        "finished). Prometheus metrics on RECSYS_HOST:RECSYS_EVENTS_METRICS_PORT. Logs go to stdout.",
    )
    worker.add_argument("--name", default=None, help="consumer name in the groups (default: RECSYS_EVENTS_CONSUMER_NAME, "
                        "else the host name); a restart with the same name resumes its pending entries")
    worker.add_argument("--once", action="store_true", help="handle what is there now, then exit (no metrics endpoint)")
    worker.set_defaults(func=_worker)

    status = sub.add_parser("status", help="freshness figures, consumer groups' pending entries, parts in progress")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    land = sub.add_parser("land", help="have the landing consumers write what they hold now, and wait for it",
                          description="What recsys_etl and the drift check do before ingesting the landing folder: "
                          "every event accepted before this command is in the folder when it returns (exit 1 if "
                          "not within --timeout: is the event worker running?).")
    land.add_argument("--timeout", type=float, default=None, help="seconds (default RECSYS_EVENTS_LAND_TIMEOUT_SECONDS)")
    land.set_defaults(func=_land)

    refused = sub.add_parser("refused", help="the newest inbox entries validation refused, with the reasons")
    refused.add_argument("-n", "--count", type=int, default=20, help="how many (default 20)")
    refused.add_argument("--json", action="store_true", help="machine-readable output")
    refused.set_defaults(func=_refused)


def _log() -> "RedisEventLog":
    from recsys.events.redis_log import RedisEventLog
    from recsys.online.redis_store import RedisOnlineStore

    return RedisEventLog(RedisOnlineStore.from_settings())


def _land(args: argparse.Namespace) -> int:
    from recsys.events.landing import land_accepted_events
    from recsys.settings import get_settings

    timeout = args.timeout if args.timeout is not None else get_settings().events_land_timeout_seconds
    answer = land_accepted_events(_log(), max(timeout, 0.001))
    if answer.get("through") is None:
        print("the event log is empty: nothing to land")
    elif answer["landed"]:
        print(f"every event accepted up to {answer['through']} is in the landing folder ({answer['seconds']} s)")
    else:
        print(f"not every event accepted up to {answer['through']} is landed after {answer['seconds']} s: "
              "is the event worker running? (`recsys stack status`, its log under <home>/services/events/)")
        return 1
    return 0


def _worker(args: argparse.Namespace) -> int:
    import logging
    import signal
    import sys

    from recsys.events.worker import EventWorker

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    worker = EventWorker(name=args.name)
    if args.once:
        print(json.dumps(worker.drain()))
        return 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    worker.run()
    return 0


def status_report(event_log: "RedisEventLog") -> dict:
    """What ``recsys events status`` shows: freshness figures, each stream's length and groups, parts in progress."""
    from recsys.events.freshness import freshness
    from recsys.events.log import EVENTS, INBOX

    return {
        "freshness": freshness(event_log.store),
        "streams": {
            stream: {"length": event_log.length(stream), "groups": [g.to_dict() for g in event_log.groups(stream)]}
            for stream in (EVENTS, INBOX)
        },
        "parts_in_progress": [{"part": p.name, "consumer": p.consumer, "events": len(p.ids)} for p in event_log.parts()],
    }


def _status(args: argparse.Namespace) -> int:
    report = status_report(_log())
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    f = report["freshness"]

    def age(seconds) -> str:
        return "never" if seconds is None else f"{seconds:.1f} s ago"

    print(f"events: {f['events_accepted']} accepted, {f['events_refused']} refused (inbox), {f['events_applied']} applied "
          f"(not yet: {f['events_not_applied']}), {f['events_landed']} landed (backlog {f['events_backlog']})")
    print(f"newest event {age(f['last_event_age_seconds'])}, newest applied {age(f['last_applied_age_seconds'])}, "
          f"newest part {age(f['last_landed_age_seconds'])}")
    version_age = f["online_version_age_seconds"]
    current_for = f" (current for {version_age:.0f} s)" if version_age is not None else ""
    print(f"online version {f['online_version'] or '-'}{current_for}")
    for stream, state in report["streams"].items():
        print(f"stream {stream}: {state['length']} entries")
        for g in state["groups"]:
            per_consumer = ", ".join(f"{c} {n}" for c, n in g["consumers"].items() if n) or "none"
            print(f"  group {g['name']}: {g['pending']} pending ({per_consumer}), {g['undelivered']} not delivered yet")
    parts = report["parts_in_progress"]
    shown = ", ".join(f"{p['part']} ({p['consumer']}, {p['events']} events)" for p in parts)
    print(f"parts in progress: {shown or 'none'}")
    return 0


def _refused(args: argparse.Namespace) -> int:
    entries = _log().refused(args.count)
    if args.json:
        print(json.dumps([{"id": e.id, **e.fields} for e in entries], indent=2))
        return 0
    if not entries:
        print("no refused inbox entries")
    for entry in entries:
        fields = dict(entry.fields)
        reason = fields.pop("reason", "")
        inbox_id = fields.pop("inbox_id", "")
        shown = " ".join(f"{k}={v}" for k, v in fields.items())
        print(f"{inbox_id or entry.id}  {reason}\n    {shown}")
    return 0
