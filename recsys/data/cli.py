"""``recsys data ...``: generate, import-movielens, validate, ingest.

Heavy imports (pandas, numpy, pyarrow) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the ``data`` command group to the ``recsys`` parser."""
    data = subparsers.add_parser("data", help="input data: generate, import-movielens, validate, ingest")
    sub = data.add_subparsers(dest="data_command", required=True)

    gen = sub.add_parser("generate", help="write a synthetic dataset with real structure (parquet)")
    gen.add_argument("--out", type=Path, required=True, help="folder to write (must not exist or be empty)")
    gen.add_argument("--users", type=int, default=2_000)
    gen.add_argument("--items", type=int, default=500)
    gen.add_argument("--interactions", type=int, default=50_000, help="rows, engaged and ignored together")
    gen.add_argument("--days", type=int, default=28)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--start", default="2024-01-01", help="first day, YYYY-MM-DD")
    gen.add_argument("--negatives", type=float, default=1.0, help="ignored impressions per engaged interaction")
    gen.add_argument("--drift", type=float, default=0.0, help="0..1: shift users, tastes and price bands")
    gen.add_argument(
        "--string-ids", action="store_true", help="text ids (u-6a7f3c users, SKU-00042Q items) instead of integers"
    )
    gen.add_argument("--force", action="store_true", help="replace an existing folder")
    gen.set_defaults(func=_generate)

    ml = sub.add_parser("import-movielens", help="convert MovieLens-100K (u.data, u.user, u.item)")
    ml.add_argument("src", type=Path, help="folder holding u.data, u.user, u.item")
    ml.add_argument("--out", type=Path, required=True)
    ml.add_argument("--min-rating", type=int, default=None, help="keep only ratings >= this")
    ml.set_defaults(func=_import_movielens)

    val = sub.add_parser("validate", help="check an input folder against the contract")
    val.add_argument("folder", type=Path)
    val.set_defaults(func=_validate)

    ing = sub.add_parser("ingest", help="validate an input folder and write a data version")
    ing.add_argument("folder", type=Path)
    ing.add_argument("--data-root", type=Path, default=None, help="default: <home>/data from the settings")
    ing.set_defaults(func=_ingest)


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _generate(args: argparse.Namespace) -> int:
    from recsys.data.synthetic import SyntheticConfig, write_synthetic

    _setup_logging()
    config = SyntheticConfig(
        n_users=args.users,
        n_items=args.items,
        n_interactions=args.interactions,
        days=args.days,
        start=args.start,
        seed=args.seed,
        negatives_per_positive=args.negatives,
        drift=args.drift,
        string_ids=args.string_ids,
    )
    rows = write_synthetic(args.out, config, overwrite=args.force)
    print(f"wrote {args.out}: " + ", ".join(f"{name} {n} rows" for name, n in rows.items()))
    return 0


def _import_movielens(args: argparse.Namespace) -> int:
    from recsys.data.movielens import import_movielens

    _setup_logging()
    rows = import_movielens(args.src, args.out, min_rating=args.min_rating)
    print(f"wrote {args.out}: " + ", ".join(f"{name} {n} rows" for name, n in rows.items()))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from recsys.data.validation import validate_input

    _setup_logging()
    tables = validate_input(args.folder)
    kinds = tables.id_kinds
    print(
        f"{args.folder} is valid: {len(tables.interactions)} interactions "
        f"({'with' if tables.has_labels else 'without'} labels), "
        f"{len(tables.users)} users, {len(tables.items)} items; "
        f"user ids: {kinds.user_id}, item ids: {kinds.item_id}"
    )
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from recsys.data.ingest import ingest

    _setup_logging()
    version = ingest(args.folder, args.data_root)
    state = "written" if version.created else "already present (no-op)"
    rows = version.manifest.get("rows", {})
    print(f"data version {version.version} {state}: {version.path}")
    print("rows: " + ", ".join(f"{name} {n}" for name, n in rows.items()))
    return 0
