"""``recsys data ...``: generate, import-movielens, import, validate, ingest.

Heavy imports (pandas, numpy, pyarrow) happen inside the command functions. Every command that
writes an input folder takes the same ``--out`` / ``--force`` (:func:`_add_output_arguments`) and
reports what it wrote the same way (:func:`_report_import`); the writing itself is
:func:`recsys.data.importing.write_input_folder`'s.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the ``data`` command group to the ``recsys`` parser."""
    data = subparsers.add_parser("data", help="input data: generate, import-movielens, import, validate, ingest")
    sub = data.add_subparsers(dest="data_command", required=True)

    gen = sub.add_parser("generate", help="write a synthetic dataset with real structure (parquet)")
    _add_output_arguments(gen)
    # dests are SyntheticConfig's field names (:func:`_dataclass_from_args`)
    gen.add_argument("--users", dest="n_users", type=int, default=2_000)
    gen.add_argument("--items", dest="n_items", type=int, default=500)
    gen.add_argument("--interactions", dest="n_interactions", type=int, default=50_000,
                     help="rows, engaged and ignored together")
    gen.add_argument("--days", type=int, default=28)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--start", default="2024-01-01", help="first day, YYYY-MM-DD")
    gen.add_argument("--negatives", dest="negatives_per_positive", type=float, default=1.0,
                     help="ignored impressions per engaged interaction")
    gen.add_argument("--drift", type=float, default=0.0, help="0..1: shift users, tastes and price bands")
    gen.add_argument(
        "--string-ids", action="store_true", help="text ids (u-6a7f3c users, SKU-00042Q items) instead of integers"
    )
    gen.set_defaults(func=_generate)

    ml = sub.add_parser(
        "import-movielens",
        help="convert MovieLens: 100K (u.data, u.user, u.item) or ml-latest(-small) (ratings.csv, movies.csv, tags.csv)",
        description="Convert a MovieLens download into the input contract. The layout is detected from the "
        "files in SRC: MovieLens-100K (u.data, u.user, u.item) or ml-latest / ml-latest-small (ratings.csv, "
        "movies.csv, optionally tags.csv; links.csv is ignored). Every rating is an implicit interaction.",
    )
    ml.add_argument("src", type=Path, help="folder holding the MovieLens files")
    _add_output_arguments(ml)
    ml.add_argument("--min-rating", type=float, default=None,
                    help="keep only ratings >= this (e.g. 4, or 3.5: ml-latest has half stars)")
    ml.set_defaults(func=_import_movielens)

    imp = sub.add_parser(
        "import",
        help="import your own event log (CSV/parquet) naming its columns",
        description="Import an event log whose columns you name, plus optional users/items tables, into the "
        "input contract. CSV ids are kept as text exactly as written (001 stays 001) unless every id is a "
        "canonical integer. Timestamps: ISO-8601 text, datetimes, or unix epochs (unit detected by magnitude, "
        "or --time-unit).",
    )
    imp.add_argument("--interactions", type=Path, required=True, help="events: a CSV/parquet file or a folder of parts")
    imp.add_argument("--user-col", required=True, help="column of the user id")
    imp.add_argument("--item-col", required=True, help="column of the item id")
    imp.add_argument("--time-col", required=True, help="column of the event time")
    imp.add_argument("--event-col", default=None, help="column of the event type (e.g. click, purchase)")
    imp.add_argument("--label-col", default=None, help="column of the 0/1 label (1 = engaged, 0 = shown, ignored)")
    imp.add_argument("--users", type=Path, default=None, help="users table (id + feature columns)")
    imp.add_argument("--users-id-col", default=None, help="its id column (default: --user-col)")
    imp.add_argument("--items", type=Path, default=None, help="items table (id + feature columns)")
    imp.add_argument("--items-id-col", default=None, help="its id column (default: --item-col)")
    imp.add_argument("--time-unit", choices=["auto", "s", "ms", "us", "ns"], default="auto",
                     help="unit of numeric timestamps (default: detected from their magnitude)")
    imp.add_argument("--drop-duplicates", action="store_true",
                     help="keep one of each exact duplicate event (default: refuse them)")
    imp.add_argument("--drop-invalid", action="store_true",
                     help="drop rows with a null id, an unusable timestamp or label, or an unknown user/item "
                     "(default: refuse them)")
    _add_output_arguments(imp)
    imp.set_defaults(func=_import)

    val = sub.add_parser("validate", help="check an input folder against the contract")
    val.add_argument("folder", type=Path)
    val.set_defaults(func=_validate)

    ing = sub.add_parser("ingest", help="validate an input folder and write a data version")
    ing.add_argument("folder", type=Path)
    ing.add_argument("--data-root", type=Path, default=None, help="default: <home>/data from the settings")
    ing.set_defaults(func=_ingest)


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out`` and ``--force``, the same for every command that writes an input folder."""
    parser.add_argument("--out", type=Path, required=True, help="input folder to write (must not exist or be empty)")
    parser.add_argument("--force", action="store_true", help="replace an existing, non-empty --out")


def _report_import(result) -> int:
    """Print what an import wrote (rows, then what was detected, dropped or warned) and how to go on."""
    print(result.summary())
    meta = result.metadata
    if meta.get("layout"):
        print(f"found the {meta.get('layout_name', meta['layout'])} layout ({', '.join(meta.get('files', []))})")
    for key, value in sorted((meta.get("detected") or {}).items()):
        print(f"detected {key}: {value}")
    for reason, count in sorted((meta.get("dropped") or {}).items()):
        print(f"dropped {count} {reason}")
    for warning in meta.get("warnings") or []:
        print(f"warning: {warning}")
    print(f"next: recsys data validate {result.out_dir}")
    return 0


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _generate(args: argparse.Namespace) -> int:
    from recsys.data.synthetic import SyntheticConfig, write_synthetic

    _setup_logging()
    rows = write_synthetic(args.out, _dataclass_from_args(SyntheticConfig, args), overwrite=args.force)
    print(f"wrote {args.out}: " + ", ".join(f"{name} {n} rows" for name, n in rows.items()))
    return 0


def _import_movielens(args: argparse.Namespace) -> int:
    from recsys.data.movielens import import_movielens

    _setup_logging()
    return _report_import(import_movielens(args.src, args.out, min_rating=args.min_rating, force=args.force))


def _import(args: argparse.Namespace) -> int:
    from recsys.data.generic import ImportSpec, import_tables

    _setup_logging()
    return _report_import(import_tables(_dataclass_from_args(ImportSpec, args), args.out, force=args.force))


def _dataclass_from_args(cls, args: argparse.Namespace):
    """``cls`` built from the parsed arguments whose dests are its field names (the others keep their defaults)."""
    import dataclasses

    given = vars(args)
    return cls(**{f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given})


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
