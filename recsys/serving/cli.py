"""``recsys recommend`` (ask the running Triton for a user's recommendations, with display attributes),
``recsys similar`` (an item's most similar items, the same way) and
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

    similar = subparsers.add_parser(
        "similar",
        help="the items most similar to an item, from the served model (Triton)",
        description="Ask the `recsys` model on Triton for the k items nearest to an item (cosine over the published "
        "item embeddings; unavailable items and items the online version does not hold left out) and show each "
        "item's display attributes from the online store.",
    )
    similar.add_argument("--item", required=True, help="raw item id, as your data has it (12, SKU-85123A, ...)")
    similar.add_argument("-k", type=int, default=None, help="how many items (default: the model's default)")
    similar.add_argument("--http", action="store_true", help="use HTTP instead of gRPC")
    similar.add_argument("--timings", action="store_true", help="also show milliseconds per stage")
    similar.add_argument("--json", action="store_true", help="machine-readable output")
    similar.set_defaults(func=_similar)

    serving = subparsers.add_parser("serving", help="Triton model repository: publish, rollback, offline top-N")
    serving_sub = serving.add_subparsers(dest="serving_command", required=True)
    _register_publishing(serving_sub)
    _register_batch(serving_sub)


def _register_publishing(serving_sub) -> None:
    """``recsys serving publish | rollback | history``."""
    p = serving_sub.add_parser("publish", help="publish the MLflow champions to Triton (version N+1)")
    p.add_argument("--force", action="store_true", help="publish even if these champions already serve")
    p.set_defaults(func=_publish)
    r = serving_sub.add_parser("rollback", help="serve the previous Triton version again")
    r.add_argument("--to-version", type=int, default=None, help="default: the version before the served one")
    r.add_argument("--reason", default="", help="recorded in publish_history.jsonl")
    r.set_defaults(func=_rollback)
    h = serving_sub.add_parser("history", help="what was published, rolled back or refused")
    h.add_argument("--last", type=int, default=10)
    h.set_defaults(func=_history)


def _register_batch(serving_sub) -> None:
    """``recsys serving precompute | precomputed``."""
    p = serving_sub.add_parser("precompute", help="precompute every user's top N into Redis (offline mode)")
    p.add_argument("--top-n", type=int, default=None)
    p.add_argument("--force", action="store_true", help="even if the current batch is up to date")
    p.set_defaults(func=_precompute)
    q = serving_sub.add_parser("precomputed", help="a user's precomputed recommendations")
    q.add_argument("--user", required=True, help="raw user id (as your data has it: 1042, u-7f3a, ...)")
    q.add_argument("-k", type=int, default=None)
    q.set_defaults(func=_read_precomputed)


def _precompute(args: argparse.Namespace) -> int:
    from recsys.serving.batch import precompute

    print(json.dumps(precompute(top_n=args.top_n, force=args.force).to_dict(), indent=2))
    return 0


def _read_precomputed(args: argparse.Namespace) -> int:
    from recsys.serving.batch import read_precomputed

    pairs = read_precomputed(args.user, args.k)
    if pairs is None:
        print(f"no precomputed recommendations for user {args.user}")
        return 1
    print(json.dumps([{"item_id": i, "score": round(v, 6)} for i, v in pairs], indent=2))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from recsys.serving.publish import publish

    print(json.dumps(publish(force=args.force).to_dict(), indent=2))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from recsys.serving.publish import rollback

    print(json.dumps(rollback(to_version=args.to_version, reason=args.reason).to_dict(), indent=2))
    return 0


def _history(args: argparse.Namespace) -> int:
    from recsys.serving.history import read_history
    from recsys.serving.plan import POPULARITY, POPULARITY_REASON
    from recsys.settings import get_settings

    for entry in read_history(get_settings().triton_repo)[-args.last:]:
        if entry.get("mode") == POPULARITY and entry.get("status") == "serving":
            print(f"# version {entry['version']}: {entry.get('reason', POPULARITY_REASON)}")
        print(json.dumps(entry, sort_keys=True))
    return 0


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
            items = client.recommend_with_attributes(user, args.k, context, timings=args.timings)
            if args.timings:  # the same request's
                timings = client.last_timings_ms
            user = ids.parse(user, client.id_kinds.user_id, "user_id")
    return _show(items, timings, {"user_id": user} if args.json else f"no recommendations for user {args.user}")


def _similar(args: argparse.Namespace) -> int:
    from recsys.data import ids
    from recsys.serving.client import RecommendClient
    from recsys.settings import get_settings

    with RecommendClient.from_settings(get_settings(), "http" if args.http else "grpc") as client:
        items = client.similar_with_attributes(args.item, args.k, timings=args.timings)
        timings = client.last_timings_ms if args.timings else {}
        item = ids.parse(args.item, client.id_kinds.item_id, "item_id")
    return _show(items, timings, {"item_id": item} if args.json else f"no similar items for item {args.item}")


def _show(items: list, timings: dict, head) -> int:
    """Print items (with attributes) as a table, or as JSON when ``head`` is the JSON answer's head
    (a dict); a str ``head`` is what to print when there are no items."""
    if isinstance(head, dict):
        out = {**head, "items": items}
        if timings:
            out["timings_ms"] = timings
        print(json.dumps(out, indent=2, default=str))
        return 0
    if not items:
        print(head)
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
