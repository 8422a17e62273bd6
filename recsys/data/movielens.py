"""Convert MovieLens into the input contract, from either layout GroupLens publishes.

The layout is detected from the files present (:func:`detect_layout`):

* ``100k``: MovieLens-100K, ``u.data`` (tab-separated ratings), ``u.user``, ``u.item`` (``|``-separated,
  latin-1);
* ``latest``: ``ml-latest`` / ``ml-latest-small``, CSV in UTF-8 with a header: ``ratings.csv``
  (userId, movieId, rating, timestamp), ``movies.csv`` (movieId, title, genres), ``tags.csv``
  (userId, movieId, tag, timestamp; optional), ``links.csv`` (ignored).

Output, the same for both layouts where the data allows it:

* ``interactions``: ``user_id``, ``item_id``, ``timestamp``, ``event_type`` = ``"rating"``, no
  ``label``: implicit feedback, every rating is a positive. The star rating is not a contract column
  and is dropped; ``min_rating`` keeps only ratings at or above a threshold instead (half stars
  exist in ml-latest, so it may be fractional).
* ``items`` (every movie of the catalogue file, rated or not): ``item_id``; ``title`` without the
  year; ``year`` (float, so continuous; NaN when the title has no year: the year in parentheses at
  the end of the title, the first one of a range such as ``(2006–2007)``; 100K falls back to the
  release date); ``main_genre`` (the first genre listed); ``genres`` (all, joined by ``|``); a movie
  without genres (``(no genres listed)``, or 100K's ``unknown`` flag only) gets ``unknown`` for both.
  From ``tags.csv`` (ml-latest): ``top_tag``, the movie's most frequent tag, lowercased and trimmed
  (ties: alphabetically first; null for an untagged movie), categorical; ``tag_count`` (float), how
  many times the movie was tagged. ``links.csv`` is ignored.
* ``users``: 100K: ``user_id``, ``age_bucket``, ``gender``, ``occupation``, ``zip_prefix`` (first
  character of the zip code: a coarse US region; non-US codes keep their first letter).
  ml-latest has no demographics: ``user_id`` only, every user with a rating.

Errors name the file, the line and the value (:class:`MovieLensFormatError`). The real files
cannot be downloaded on these machines; tests use small fixtures in exactly the original formats
(tests/fixtures/movielens/ for 100K, tests/fixtures/movielens-latest/ for ml-latest).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from recsys.data.importing import (
    ImportResult,
    InputFormatError,
    Progress,
    SourceTable,
    check_output_folder,
    read_source,
    write_input_folder,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

log = logging.getLogger(__name__)

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]  # fmt: skip
NO_GENRE = "unknown"
# (upper bound exclusive, label); MovieLens-1M's age groups, a common choice
_AGE_BUCKETS = [(18, "under 18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")]

LAYOUT_100K = "100k"
LAYOUT_LATEST = "latest"
_LAYOUT_FILES = {LAYOUT_100K: ("u.data", "u.user", "u.item"), LAYOUT_LATEST: ("ratings.csv", "movies.csv")}
_LAYOUT_NAMES = {LAYOUT_100K: "MovieLens-100K", LAYOUT_LATEST: "ml-latest"}

# "Title (1995)", "Title (1995) " (trailing spaces), "Title (2006–2007)" / "(2006-)" (a series' range):
# the last parenthesised 4-digit year at the very end; parentheses earlier in the title stay in it.
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-–]\s*(?:\d{4})?\s*)?\)\s*$", re.DOTALL)


class MovieLensFormatError(InputFormatError):
    """A MovieLens file is missing or does not have the expected format."""


# ------------------------------------------------------------------------------------------
# Entry points


def detect_layout(src_dir: Path) -> str:
    """``"100k"`` or ``"latest"``, from the files in ``src_dir``; a clear error when neither is there."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise MovieLensFormatError(f"{src_dir}: folder not found")
    present = {p.name for p in src_dir.iterdir() if p.is_file()}
    # the first file of each layout identifies it; its other files are checked when read
    found = [layout for layout, files in _LAYOUT_FILES.items() if files[0] in present]
    if len(found) == 1:
        return found[0]
    if len(found) == 2:
        raise MovieLensFormatError(
            f"{src_dir} holds both MovieLens-100K (u.data) and ml-latest (ratings.csv) files; point at one of them"
        )
    hint = ""
    if "ratings.dat" in present:
        hint = " (ratings.dat is MovieLens-1M/10M's '::' format, which is not supported)"
    raise MovieLensFormatError(
        f"{src_dir}: no MovieLens files found{hint}: expected u.data, u.user, u.item (MovieLens-100K) or "
        f"ratings.csv, movies.csv and optionally tags.csv (ml-latest, ml-latest-small); "
        f"found: {', '.join(sorted(present)) or 'nothing'}"
    )


def _files_read(src_dir: Path, layout: str) -> list[str]:
    """The files a layout reads that are present (links.csv, README.txt and the rest are not read)."""
    optional = ("tags.csv",) if layout == LAYOUT_LATEST else ()
    return [f for f in (*_LAYOUT_FILES[layout], *optional) if (src_dir / f).is_file()]


def import_movielens(
    src_dir: Path, out_dir: Path, min_rating: Optional[float] = None, force: bool = False
) -> ImportResult:
    """Convert the MovieLens files in ``src_dir`` (either layout) into contract tables in ``out_dir``.

    Written atomically by the shared writer (:func:`recsys.data.importing.write_input_folder`); an
    existing non-empty ``out_dir`` is refused unless ``force``. ``import.json`` records the layout.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    check_output_folder(out_dir, force)  # before reading: a wrong --out fails at once
    started = time.monotonic()
    layout = detect_layout(src_dir)
    tables = read_movielens(src_dir, min_rating=min_rating)
    seconds = round(time.monotonic() - started, 3)
    metadata = {
        "importer": "movielens",
        "layout": layout,
        "layout_name": _LAYOUT_NAMES[layout],
        "source": str(src_dir.resolve()),
        "files": _files_read(src_dir, layout),
        "min_rating": min_rating,
        "read_seconds": seconds,
    }
    rows = write_input_folder(out_dir, tables, force=force, metadata=metadata)
    log.info("imported %s from %s into %s in %.1f s: %s", _LAYOUT_NAMES[layout], src_dir, out_dir,
             time.monotonic() - started, rows)
    return ImportResult(out_dir, rows, metadata)


def read_movielens(src_dir: Path, min_rating: Optional[float] = None) -> dict[str, "pd.DataFrame"]:
    """Parse the MovieLens files in ``src_dir`` (layout detected) into contract DataFrames (no writing)."""
    src_dir = Path(src_dir)
    layout = detect_layout(src_dir)
    log.info("%s: found the %s layout (%s)", src_dir, _LAYOUT_NAMES[layout], ", ".join(_files_read(src_dir, layout)))
    reader = _read_100k if layout == LAYOUT_100K else _read_latest
    try:
        tables = reader(src_dir, min_rating)
    except MovieLensFormatError:
        raise
    except InputFormatError as exc:  # from the shared CSV reader: the same message, MovieLens' type
        raise MovieLensFormatError(exc.problems) from None
    log.info("read MovieLens: %d ratings, %d users, %d items",
             len(tables["interactions"]), len(tables["users"]), len(tables["items"]))
    return tables


# ------------------------------------------------------------------------------------------
# Shared by both layouts


def split_title(raw: str) -> tuple[str, float]:
    """``"Toy Story (1995) "`` -> ``("Toy Story", 1995.0)``; a title without a year keeps its text, NaN."""
    text = str(raw).strip()
    match = _TITLE_YEAR.match(text)
    if match is None or not match.group("title").strip():
        return text, float("nan")
    return match.group("title").strip(), float(match.group("year"))


def _interactions(users, items, seconds, stars, min_rating) -> "pd.DataFrame":
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(
        {
            "user_id": np.asarray(users, dtype=np.int64),
            "item_id": np.asarray(items, dtype=np.int64),
            "timestamp": pd.to_datetime(np.asarray(seconds, dtype=np.int64), unit="s"),
            "event_type": "rating",
        }
    )
    if min_rating is not None:
        frame = frame[np.asarray(stars, dtype=np.float64) >= float(min_rating)].reset_index(drop=True)
    return frame


def _genre_columns(genre_lists: list[list[str]]) -> tuple[list[str], list[str]]:
    """(main_genre, genres joined by ``|``) per movie; no genre -> ``unknown``."""
    main, joined = [], []
    for names in genre_lists:
        names = [g for g in names if g and g != NO_GENRE] or [NO_GENRE]
        main.append(names[0])
        joined.append("|".join(names))
    return main, joined


# ------------------------------------------------------------------------------------------
# MovieLens-100K: u.data, u.user, u.item


def _read_100k(src_dir: Path, min_rating: Optional[float]) -> dict[str, "pd.DataFrame"]:
    import pandas as pd

    ratings = _read_fields(src_dir / "u.data", "\t", 4, "latin-1")
    user_rows = _read_fields(src_dir / "u.user", "|", 5, "latin-1")
    item_rows = _read_fields(src_dir / "u.item", "|", 5 + len(GENRES), "latin-1")

    # ---- interactions: user id, item id, rating, unix seconds
    path = src_dir / "u.data"
    interactions = _interactions(
        [_int(path, line, fields[0], "user id") for line, fields in ratings],
        [_int(path, line, fields[1], "item id") for line, fields in ratings],
        [_int(path, line, fields[3], "timestamp") for line, fields in ratings],
        [_int(path, line, fields[2], "rating") for line, fields in ratings],
        min_rating,
    )

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
    ids, titles, years, genre_lists = [], [], [], []
    for line, fields in item_rows:
        ids.append(_int(path, line, fields[0], "movie id"))
        title, year = split_title(fields[1])
        if year != year:  # NaN: no year in the title, use the release date's
            year = _release_year(path, line, fields[2])
        titles.append(title)
        years.append(year)
        flags = [_flag(path, line, value, GENRES[i]) for i, value in enumerate(fields[5:])]
        genre_lists.append([GENRES[i] for i, on in enumerate(flags) if on])
    main_genres, genres = _genre_columns(genre_lists)
    items = pd.DataFrame(
        {
            "item_id": pd.Series(ids, dtype="int64"),
            "title": titles,
            "year": pd.Series(years, dtype="float64"),
            "main_genre": main_genres,
            "genres": genres,
        }
    )
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


def _release_year(path: Path, line: int, value: str) -> float:
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


# ------------------------------------------------------------------------------------------
# ml-latest / ml-latest-small: ratings.csv, movies.csv, tags.csv (CSV with a header, UTF-8)

_RATINGS_COLUMNS = {"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"}
_MOVIES_COLUMNS = ("movieId", "title", "genres")
_TAGS_COLUMNS = ("userId", "movieId", "tag", "timestamp")
_NO_GENRES = "(no genres listed)"


def _read_latest(src_dir: Path, min_rating: Optional[float]) -> dict[str, "pd.DataFrame"]:
    import numpy as np
    import pandas as pd

    ratings = _read_ratings(src_dir / "ratings.csv")
    movies = _read_movies(src_dir / "movies.csv")

    # Every rating must name a movie of movies.csv (validation would refuse it later, less precisely).
    unknown = ~np.isin(ratings["movieId"].to_numpy(), movies["item_id"].to_numpy())
    if unknown.any():
        row = int(np.argmax(unknown))
        where = _ratings_text(src_dir / "ratings.csv").locate(row)  # rows align: both skip blank lines
        raise MovieLensFormatError(
            f"{where}: movieId {int(ratings['movieId'].iloc[row])} is not in "
            f"movies.csv ({int(unknown.sum())} ratings reference "
            f"{len(np.unique(ratings['movieId'].to_numpy()[unknown]))} unknown movies)"
        )
    interactions = _interactions(ratings["userId"], ratings["movieId"], ratings["timestamp"], ratings["rating"], min_rating)
    users = pd.DataFrame({"user_id": np.unique(ratings["userId"].to_numpy()).astype(np.int64)})

    tags_path = src_dir / "tags.csv"
    if tags_path.is_file():
        movies = movies.merge(_tag_features(tags_path, movies["item_id"]), on="item_id", how="left", sort=False)
        movies["tag_count"] = movies["tag_count"].fillna(0.0).astype("float64")
        movies["top_tag"] = movies["top_tag"].astype(object).where(movies["top_tag"].notna(), None)
    else:
        log.info("%s: no tags.csv, so no tag features", src_dir)
    return {"interactions": interactions, "users": users, "items": movies}


def _read_ratings(path: Path) -> "pd.DataFrame":
    """userId, movieId (int64), rating (float64), timestamp (int64), in file order.

    The fast path lets pandas' C parser read the numbers directly (ml-latest has 33M ratings: as
    text they would not fit in memory); if that fails, or a rating is empty, the file is read again
    as text to name the first bad line and value.
    """
    import pandas as pd

    _require_file(path)
    _require_columns(path, list(_RATINGS_COLUMNS))
    dtype = {c: ("int64" if kind == "int" else "float64") for c, kind in _RATINGS_COLUMNS.items()}
    progress = Progress(path.name)
    try:
        chunks = []
        for chunk in pd.read_csv(path, usecols=list(_RATINGS_COLUMNS), dtype=dtype, chunksize=1_000_000,
                                 encoding="utf-8"):
            chunks.append(chunk)
            progress.add(len(chunk))
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        _diagnose_ratings(path, exc)  # raises with the line and value
    if not chunks or progress.rows == 0:
        raise MovieLensFormatError(f"{path.name}: the file has no ratings")
    ratings = pd.concat(chunks, ignore_index=True)
    if ratings["rating"].isna().any():  # a float column takes an empty field as NaN without complaint
        _diagnose_ratings(path, ValueError("empty rating"))
    return ratings


def _ratings_text(path: Path) -> SourceTable:
    """ratings.csv as text with every row's line: the slow path, for error messages only."""
    return read_source(path, list(_RATINGS_COLUMNS), text=_RATINGS_COLUMNS, nulls={c: [] for c in _RATINGS_COLUMNS})


def _diagnose_ratings(path: Path, exc: BaseException) -> None:
    """Re-read ratings.csv as text and raise naming the first line whose value is not a number."""
    table = _ratings_text(path)
    for column, kind in _RATINGS_COLUMNS.items():
        _checked_numbers(table, column, kind)
    raise MovieLensFormatError(f"{path.name}: cannot read the ratings: {exc}")


def _read_movies(path: Path) -> "pd.DataFrame":
    """movies.csv -> the items table (without tag features)."""
    import numpy as np
    import pandas as pd

    _require_file(path)
    _require_columns(path, list(_MOVIES_COLUMNS))
    table = read_source(path, list(_MOVIES_COLUMNS), text=_MOVIES_COLUMNS, nulls={c: [] for c in _MOVIES_COLUMNS})
    if len(table.frame) == 0:
        raise MovieLensFormatError(f"{path.name}: the file has no movies")
    ids = _checked_numbers(table, "movieId", "int")
    duplicated = pd.Series(ids).duplicated(keep="first").to_numpy()
    if duplicated.any():
        row = int(np.argmax(duplicated))
        first = int(np.argmax(ids == ids[row]))
        raise MovieLensFormatError(
            f"{table.locate(row)}: movieId {ids[row]} appears twice (first at line {int(table.position[first])})"
        )
    titles, years = [], []
    for row, raw in enumerate(table.frame["title"]):
        title, year = split_title(raw)
        if not title:
            raise MovieLensFormatError(f"{table.locate(row)}: title is empty: {raw!r}")
        titles.append(title)
        years.append(year)
    genre_lists = [
        [] if text.strip() in ("", _NO_GENRES) else [g.strip() for g in text.split("|")]
        for text in table.frame["genres"]
    ]
    main_genres, genres = _genre_columns(genre_lists)
    return pd.DataFrame(
        {
            "item_id": ids.astype(np.int64),
            "title": titles,
            "year": np.asarray(years, dtype=np.float64),
            "main_genre": main_genres,
            "genres": genres,
        }
    )


def _tag_features(path: Path, item_ids: "pd.Series") -> "pd.DataFrame":
    """Per tagged movie: ``top_tag`` (most frequent normalized tag; ties alphabetical) and ``tag_count``.

    Tags are lowercased and trimmed (``"Sci-Fi "`` and ``"sci-fi"`` are one tag); empty tags are
    skipped; tags of movies missing from movies.csv are skipped with a warning (they describe no item).
    """
    import numpy as np
    import pandas as pd

    _require_columns(path, list(_TAGS_COLUMNS))
    table = read_source(path, ["movieId", "tag"], text=("movieId", "tag"), nulls={"movieId": [], "tag": []})
    movie = _checked_numbers(table, "movieId", "int")
    tag = table.frame["tag"].str.strip().str.lower()
    frame = pd.DataFrame({"item_id": movie, "tag": tag.to_numpy()})
    frame = frame[frame["tag"] != ""]
    known = frame["item_id"].isin(item_ids)
    if not known.all():
        log.warning("%s: %d tags name %d movies missing from movies.csv; they are skipped", path.name,
                    int((~known).sum()), frame.loc[~known, "item_id"].nunique())
        frame = frame[known]
    counts = frame.groupby(["item_id", "tag"]).size().rename("n").reset_index()
    # most frequent first, then alphabetical: the first row per movie is its top tag
    counts = counts.sort_values(["item_id", "n", "tag"], ascending=[True, False, True], kind="mergesort")
    top = counts.drop_duplicates("item_id", keep="first").set_index("item_id")["tag"]
    total = frame.groupby("item_id").size().astype(np.float64)
    log.info("%s: %d tags on %d movies", path.name, len(frame), len(total))
    return pd.DataFrame({"item_id": total.index.to_numpy(np.int64), "top_tag": top.reindex(total.index).to_numpy(),
                         "tag_count": total.to_numpy()})


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise MovieLensFormatError(
            f"{path}: file not found (the ml-latest layout needs ratings.csv and movies.csv; tags.csv is optional)"
        )


def _require_columns(path: Path, columns: list[str]) -> None:
    from recsys.data.importing import read_header

    header = read_header(path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise MovieLensFormatError(
            f"{path.name} line 1: missing column(s) {', '.join(missing)} (header: {', '.join(header) or 'empty'})"
        )


def _checked_numbers(table: SourceTable, column: str, kind: str) -> Any:
    """A text column as int64 / float64 numbers; raises naming the first line that is not one."""
    import numpy as np
    import pandas as pd

    text = table.frame[column].astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    bad = numbers.isna().to_numpy()
    if kind == "int":
        with np.errstate(invalid="ignore"):
            bad |= ~bad & (np.mod(numbers.to_numpy(dtype=np.float64), 1) != 0)
    if bad.any():
        row = int(np.argmax(bad))
        value = table.frame[column].iloc[row]
        what = "is empty" if not str(value).strip() else f"is not {'an integer' if kind == 'int' else 'a number'}"
        raise MovieLensFormatError(f"{table.locate(row)}: {column} {what}: {value!r}")
    return numbers.to_numpy(dtype=np.int64 if kind == "int" else np.float64)
