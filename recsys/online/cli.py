"""``recsys online``: refresh the Redis online store, show its status, manage unavailable items.

Imports nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    online = subparsers.add_parser("online", help="Redis online feature store: refresh, status, unavailable items")
    sub = online.add_subparsers(dest="online_command", required=True)

    refresh = sub.add_parser(
        "refresh",
        help="write a feature version to Redis and make it current",
        description="Write a feature version (default: the newest under <home>/features) as a new online "
        "version, switch to it atomically, then delete versions retired longer than the grace period. "
        "A no-op when that feature version is already current (unless --force).",
    )
    refresh.add_argument("--features", type=Path, default=None, help="feature version folder (default: newest)")
    refresh.add_argument("--data", type=Path, default=None, help="its data version folder (default: <home>/data/<version>)")
    refresh.add_argument("--incremental", action="store_true", help="write only entities that changed since the current version")
    refresh.add_argument("--force", action="store_true", help="write even if this feature version is already current")
    refresh.set_defaults(func=_refresh)

    status = sub.add_parser("status", help="current online version, its age, retired versions")
    status.set_defaults(func=_status)

    gc = sub.add_parser("gc", help="delete online versions retired longer than the grace period")
    gc.set_defaults(func=_gc)

    unavailable = sub.add_parser(
        "unavailable",
        help="items taken off (or back on) sale; applies at once, no refresh",
        description="The unavailable-items set is not versioned: serving filters these raw item ids from the next "
        "request on. Ids are as your data has them (e.g. 4235 or SKU-85123A); they must be of the current online "
        "version's item id kind.",
    )
    unavailable.add_argument("action", choices=["add", "remove", "list"])
    unavailable.add_argument("items", nargs="*", metavar="ITEM", help="raw item ids (integers or text)")
    unavailable.set_defaults(func=_unavailable)


def _store():
    from recsys.online.redis_store import RedisOnlineStore

    return RedisOnlineStore.from_settings()


def _refresh(args: argparse.Namespace) -> int:
    import logging

    from recsys.online.refresh import refresh_online_store

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = refresh_online_store(
        str(args.features) if args.features else None,
        str(args.data) if args.data else None,
        incremental=args.incremental,
        force=args.force,
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def _status(args: argparse.Namespace) -> int:
    store = _store()
    print(json.dumps(store.status(), indent=2, default=str))
    return 0


def _gc(args: argparse.Namespace) -> int:
    removed = _store().collect_garbage()
    print(f"removed {len(removed)} version(s): {' '.join(removed) if removed else '-'}")
    return 0


def _unavailable(args: argparse.Namespace) -> int:
    from recsys.errors import RecsysError

    store = _store()
    if args.action == "list":
        for item in store.unavailable():
            print(item)
        return 0
    if not args.items:
        raise RecsysError(f"`recsys online unavailable {args.action}` needs at least one raw item id")
    if args.action == "add":
        changed = store.add_unavailable(args.items)
        print(f"{changed} item(s) marked unavailable ({len(args.items) - changed} already were)")
    else:
        changed = store.remove_unavailable(args.items)
        print(f"{changed} item(s) available again ({len(args.items) - changed} were not unavailable)")
    return 0
