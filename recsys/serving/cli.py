"""``recsys recommend`` (ask the running Triton for a user's recommendations, with display attributes) and
``recsys serving publish | rollback | history | precompute | precomputed``."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recommend",
        help="recommendations for a user from the served model (Triton)",
        description="Ask the `recsys` model on Triton (four stages) for a user's top k items and show each "
        "item's display attributes from the online store.",
    )
    parser.add_argument("--user", required=True, help="raw user id, as your data has it (1042, u-7f3a, ...)")
    parser.add_argument("-k", type=int, default=None, help="how many items (default: the model's default)")
    parser.add_argument(
        "--context", default=None, help='JSON object, e.g. \'{"exclude_items": [12, 40]}\' or \'{"exclude_items": ["SKU-1"]}\''
    )
    parser.add_argument("--http", action="store_true", help="use HTTP instead of gRPC")
    parser.add_argument("--timings", action="store_true", help="also show milliseconds per stage")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--precomputed", action="store_true",
        help="read the offline (batch) recommendations from Redis; falls back to Triton for a user without them",
    )
    parser.set_defaults(func=_recommend)

    from recsys.serving import batch, publish

    serving = subparsers.add_parser("serving", help="Triton model repository: publish, rollback, offline top-N")
    serving_sub = serving.add_subparsers(dest="serving_command", required=True)
    publish.register_cli(serving_sub)
    batch.register_cli(serving_sub)


def _recommend(args: argparse.Namespace) -> int:
    from recsys.data import ids
    from recsys.errors import RecsysError
    from recsys.serving.client import RecommendClient
    from recsys.settings import get_settings

    context = None
    if args.context:
        try:
            context = json.loads(args.context)
        except json.JSONDecodeError as exc:
            raise RecsysError(f"--context is not valid JSON: {exc}") from None
    items = None
    if args.precomputed:
        items = _precomputed_with_attributes(args.user, args.k)
        if items is None:
            print(f"(no precomputed recommendations for user {args.user}: asking Triton)")
    timings = {}
    user = args.user  # as typed: the served model (or the batch) parses it into the deployment's id kind
    if items is None:
        with RecommendClient.from_settings(get_settings(), "http" if args.http else "grpc") as client:
            items = client.recommend_with_attributes(user, args.k, context)
            if args.timings:
                client.recommend(user, args.k, context, timings=True)
                timings = client.last_timings_ms
            user = ids.parse(user, client.id_kinds.user_id, "user_id")
    if args.json:
        out = {"user_id": user, "items": items}
        if timings:
            out["timings_ms"] = timings
        print(json.dumps(out, indent=2, default=str))
        return 0
    if not items:
        print(f"no recommendations for user {args.user}")
        return 0
    attributes = [key for key in items[0] if key not in ("item_id", "score")]
    header = ["#", "item_id", "score", *attributes]
    rows = [[str(n), str(i["item_id"]), f"{i['score']:.4f}", *(str(i.get(a, "")) for a in attributes)] for n, i in enumerate(items, 1)]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if timings:
        print("ms per stage: " + ", ".join(f"{stage} {ms:.2f}" for stage, ms in timings.items()))
    return 0


def _precomputed_with_attributes(user_id: str, k) -> "list[dict] | None":
    """The offline top-N of a user with display attributes, or None when the batch has no list for them."""
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.serving.batch import read_precomputed
    from recsys.settings import get_settings

    settings = get_settings()
    pairs = read_precomputed(user_id, k, settings=settings)
    if pairs is None:
        return None
    attributes = RedisOnlineStore.from_settings(settings).display([item for item, _ in pairs]) if pairs else []
    return [{"item_id": item, "score": score, **(attrs or {})} for (item, score), attrs in zip(pairs, attributes)]
