"""Convert MovieLens-100K (``u.data``, ``u.user``, ``u.item``) into the input contract.

* ``users``: ``user_id``, ``age_bucket``, ``gender``, ``occupation``, ``zip_prefix`` (first character
  of the zip code: a coarse US region; non-US codes keep their first letter)
* ``items``: ``item_id``, ``title``, ``release_year`` (float: continuous), ``main_genre`` (the first
  listed genre other than "unknown"), ``genres`` (all genres joined by ``|``)
* ``interactions``: ``user_id``, ``item_id``, ``timestamp``, ``event_type`` = ``"rating"``, no ``label``
  (implicit feedback: every rating is a positive). The star rating is not a contract column and is
  dropped; ``min_rating`` keeps only ratings at or above a threshold instead.

The real files cannot be downloaded on these machines; tests use a small fixture in the same format
(tests/fixtures/movielens/).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from recsys.errors import RecsysError

log = logging.getLogger(__name__)

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]  # fmt: skip
# (upper bound exclusive, label); MovieLens-1M's age groups, a common choice
_AGE_BUCKETS = [(18, "under 18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")]


class MovieLensFormatError(RecsysError):
    """A MovieLens file is missing or does not have the expected format."""


def import_movielens(src_dir: Path, out_dir: Path, min_rating: Optional[int] = None) -> dict[str, int]:
    """Convert the MovieLens-100K files in ``src_dir`` into contract tables (parquet) in ``out_dir``.

    Written atomically (a temporary sibling folder renamed into place); an existing non-empty
    ``out_dir`` is refused. Returns rows per table.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.data.versioning import atomic_directory

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MovieLensFormatError(f"{out_dir} already exists and is not empty")
    tables = read_movielens(src_dir, min_rating=min_rating)
    with atomic_directory(out_dir) as tmp:
        for name, frame in tables.items():
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp / f"{name}.parquet")
    rows = {name: int(len(frame)) for name, frame in tables.items()}
    log.info("imported MovieLens from %s into %s: %s", src_dir, out_dir, rows)
    return rows


def read_movielens(src_dir: Path, min_rating: Optional[int] = None) -> dict:
    """Parse the three MovieLens-100K files into contract DataFrames (no writing)."""
    import pandas as pd

    src_dir = Path(src_dir)
    ratings = _read_fields(src_dir / "u.data", "\t", 4, "latin-1")
    user_rows = _read_fields(src_dir / "u.user", "|", 5, "latin-1")
    item_rows = _read_fields(src_dir / "u.item", "|", 5 + len(GENRES), "latin-1")

    # ---- interactions: user id, item id, rating, unix seconds
    path = src_dir / "u.data"
    user_ids = [_int(path, line, fields[0], "user id") for line, fields in ratings]
    item_ids = [_int(path, line, fields[1], "item id") for line, fields in ratings]
    stars = [_int(path, line, fields[2], "rating") for line, fields in ratings]
    seconds = [_int(path, line, fields[3], "timestamp") for line, fields in ratings]
    interactions = pd.DataFrame(
        {
            "user_id": pd.Series(user_ids, dtype="int64"),
            "item_id": pd.Series(item_ids, dtype="int64"),
            "timestamp": pd.to_datetime(pd.Series(seconds, dtype="int64"), unit="s"),
            "event_type": "rating",
        }
    )
    if min_rating is not None:
        interactions = interactions[pd.Series(stars) >= min_rating].reset_index(drop=True)

    # ---- users: id | age | gender | occupation | zip code
    path = src_dir / "u.user"
    users = pd.DataFrame(
        {
            "user_id": pd.Series([_int(path, line, f[0], "user id") for line, f in user_rows], dtype="int64"),
            "age_bucket": [_age_bucket(_int(path, line, f[1], "age")) for line, f in user_rows],
            "gender": [f[2] for _, f in user_rows],
            "occupation": [f[3] for _, f in user_rows],
            "zip_prefix": [f[4][:1].upper() or "?" for _, f in user_rows],
        }
    )

    # ---- items: id | title | release date | video release date | IMDb URL | 19 genre flags
    path = src_dir / "u.item"
    titles, years, main_genres, genre_lists, ids = [], [], [], [], []
    for line, fields in item_rows:
        ids.append(_int(path, line, fields[0], "movie id"))
        titles.append(fields[1])
        years.append(_year(path, line, fields[2]))
        flags = [_flag(path, line, value, GENRES[i]) for i, value in enumerate(fields[5:])]
        names = [GENRES[i] for i, on in enumerate(flags) if on]
        real = [g for g in names if g != "unknown"] or ["unknown"]
        main_genres.append(real[0])
        genre_lists.append("|".join(real))
    items = pd.DataFrame(
        {
            "item_id": pd.Series(ids, dtype="int64"),
            "title": titles,
            "release_year": pd.Series(years, dtype="float64"),
            "main_genre": main_genres,
            "genres": genre_lists,
        }
    )
    log.info("read MovieLens: %d ratings, %d users, %d items", len(interactions), len(users), len(items))
    return {"interactions": interactions, "users": users, "items": items}


def _read_fields(path: Path, separator: str, expected: int, encoding: str) -> list[tuple[int, list[str]]]:
    """[(line number, fields)] for every non-blank line; refuses lines with the wrong field count."""
    if not path.is_file():
        raise MovieLensFormatError(f"{path}: file not found (expected the MovieLens-100K files u.data, u.user, u.item)")
    rows = []
    with open(path, encoding=encoding, newline="") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(separator)
            if len(fields) != expected:
                raise MovieLensFormatError(
                    f"{path.name} line {number}: expected {expected} fields separated by {separator!r}, "
                    f"found {len(fields)}: {line[:120]!r}"
                )
            rows.append((number, fields))
    if not rows:
        raise MovieLensFormatError(f"{path.name}: the file is empty")
    return rows


def _int(path: Path, line: int, value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise MovieLensFormatError(f"{path.name} line {line}: {what} is not an integer: {value!r}") from None


def _flag(path: Path, line: int, value: str, genre: str) -> bool:
    if value.strip() not in ("0", "1"):
        raise MovieLensFormatError(f"{path.name} line {line}: genre flag {genre!r} is not 0 or 1: {value!r}")
    return value.strip() == "1"


def _year(path: Path, line: int, value: str) -> float:
    """Release dates look like ``01-Jan-1995``; a few are blank (NaN)."""
    value = value.strip()
    if not value:
        return float("nan")
    year = value.rsplit("-", 1)[-1]
    if not (year.isdigit() and len(year) == 4):
        raise MovieLensFormatError(f"{path.name} line {line}: release date is not DD-Mon-YYYY: {value!r}")
    return float(year)


def _age_bucket(age: int) -> str:
    for upper, label in _AGE_BUCKETS:
        if age < upper:
            return label
    return "56+"
