"""``recsys api serve | token | send-event``: the HTTP API from the command line.

- ``serve``: run the API in the foreground (what the stack's ``api`` service runs).
- ``token``: where the API's bearer token is (the file, or RECSYS_API_TOKEN); ``--show`` prints it.
- ``send-event``: send one interaction event through ``POST /v1/events`` (``settings.api``).
"""

from __future__ import annotations

import argparse
import json
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("api", help="the HTTP API: serve, token, send-event")
    sub = parser.add_subparsers(dest="api_command", required=True)

    serve = sub.add_parser("serve", help="run the API in the foreground (RECSYS_HOST:RECSYS_API_PORT)")
    serve.set_defaults(func=_serve)

    token = sub.add_parser("token", help="where the API's bearer token is kept (--show: the token itself)")
    token.add_argument("--show", action="store_true", help="print the token instead of where it is kept")
    token.set_defaults(func=_token)

    send = sub.add_parser("send-event", help="send one interaction event through POST /v1/events",
                          description="Send one event to the recsys API (settings.api) with its bearer token; the "
                          "event takes effect milliseconds later (e.g. a purchased item leaves the user's "
                          "recommendations), once the event worker applied it.")
    send.add_argument("--user", required=True, help="raw user id (1042, u-7f3a, ...)")
    send.add_argument("--item", required=True, help="raw item id, in the served catalogue")
    send.add_argument("--type", required=True, dest="event_type", help="event type, one of RECSYS_EVENT_TYPES")
    send.add_argument("--timestamp", default="now",
                      help="ISO-8601 (2026-12-06T21:30:00Z) or unix epoch seconds/milliseconds; default: now")
    send.add_argument("--request-id", default=None, help="the recommendation request this event answers")
    send.set_defaults(func=_send_event)


def _serve(args: argparse.Namespace) -> int:
    from recsys.api.server import serve

    serve()
    return 0


def _token(args: argparse.Namespace) -> int:
    from recsys.api.token import api_token, token_source
    from recsys.settings import get_settings

    s = get_settings()
    token = api_token(s)  # generates the file if the embedded API never started: clients can be set up first
    print(token if args.show else token_source(s))
    return 0


def _send_event(args: argparse.Namespace) -> int:
    from recsys.api.client import ApiClient

    event = {"user_id": args.user, "item_id": args.item, "event_type": args.event_type,
             "timestamp": _timestamp(args.timestamp)}
    if args.request_id:
        event["request_id"] = args.request_id
    with ApiClient.from_settings() as api:
        print(json.dumps(api.send_events([event]), indent=2))
    return 0


def _timestamp(text: str):
    """``now`` -> the current time (ISO-8601 UTC); a number -> epoch seconds/ms; anything else as given."""
    if text == "now":
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        return float(text)
    except ValueError:
        return text
