"""The input contract: which tables a user brings, their columns, and how to read them.

A data folder holds three tables (``interactions``, ``users``, ``items``), each stored as a single
file ``NAME.parquet`` (or ``NAME.csv``) and/or a folder ``NAME/`` of parquet/CSV parts: one table.
Live parts (:func:`live_part_metadata`) are parts of ``interactions/`` written by the landing consumer
from events accepted live. See docs/layouts.md, section 1.

This module only describes and reads tables; :mod:`recsys.data.validation` checks them.
pandas and pyarrow are imported inside functions so that importing the contract stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from recsys.data import ids
from recsys.errors import InputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd


class DataValidationError(InputError):
    """Input data breaks the contract. ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: list[str], folder: Optional[Path] = None):
        self.problems = list(problems)
        self.folder = folder
        where = f" in {folder}" if folder else ""
        header = f"{len(self.problems)} problem(s) with the input data{where}:"
        super().__init__("\n".join([header] + [f"  - {p}" for p in self.problems]))


# Kinds of contract columns; validation knows how to check and normalize each kind.
ID = "id"  # integer >= 0 (int64) or text (str): see recsys.data.ids
TIMESTAMP = "timestamp"  # datetime / unix seconds / ISO-8601 text, stored as datetime64[ns] (UTC, naive)
TEXT = "text"  # free text, stored as str
NULLABLE_TEXT = "nullable text"  # free text or null, stored as str / None
LABEL = "label"  # 0/1, stored as int8


@dataclass(frozen=True)
class TableSpec:
    """What the contract says about one input table."""

    name: str
    required: dict[str, str]
    """column -> kind, for the columns every file must have."""
    optional: dict[str, str] = field(default_factory=dict)
    """column -> kind, for contract columns that may be absent."""
    unique_key: Optional[str] = None
    """A column whose values must be unique (the entity id of users/items)."""
    allows_features: bool = False
    """True: any other column is a feature column. False: other columns are dropped."""

    @property
    def contract_columns(self) -> dict[str, str]:
        return {**self.required, **self.optional}


INTERACTIONS = TableSpec(
    name="interactions",
    required={"user_id": ID, "item_id": ID, "timestamp": TIMESTAMP},
    # request_id: the recommendation request an event answers (attribution); null when unknown
    optional={"event_type": TEXT, "label": LABEL, "request_id": NULLABLE_TEXT},
)
USERS = TableSpec(name="users", required={"user_id": ID}, unique_key="user_id", allows_features=True)
ITEMS = TableSpec(name="items", required={"item_id": ID}, unique_key="item_id", allows_features=True)

TABLES: dict[str, TableSpec] = {spec.name: spec for spec in (INTERACTIONS, USERS, ITEMS)}

ID_COLUMNS = ids.ID_COLUMNS
"""``user_id`` and ``item_id``: the contract columns of kind ID (integers or text: recsys.data.ids)."""

# Names the later hops use for their own columns; a feature column may not take them.
RESERVED_COLUMNS = frozenset({"user_id", "item_id", "timestamp", "event_type", "label", "click"})

# Oldest timestamp accepted: anything earlier is almost always a unit mistake (ms read as s, 0 for null).
MIN_TIMESTAMP = "1990-01-01"

_FORMATS = (".parquet", ".csv")


def table_files(folder: Path, name: str) -> list[Path]:
    """The files holding table ``name`` in ``folder``, in reading order; [] when the table is missing.

    The single file ``NAME.parquet`` (else ``NAME.csv``: parquet wins) if present, followed by every
    part in the folder ``NAME/`` (``*.parquet`` and ``*.csv``, sorted by name). Files whose names start
    with ``.`` or ``_`` are ignored: ``_SUCCESS`` markers and parts still being written (a writer renames
    a hidden temporary file into place). So a user's export plus the live parts are one table.
    """
    folder = Path(folder)
    files = []
    for suffix in _FORMATS:
        single = folder / f"{name}{suffix}"
        if single.is_file():
            files.append(single)
            break
    parts_dir = folder / name
    if parts_dir.is_dir():
        files += sorted(
            p
            for p in parts_dir.iterdir()
            if p.is_file() and p.suffix in _FORMATS and not p.name.startswith((".", "_"))
        )
    return files


# --------------------------------------------------------------------------------------------
# Live parts: what the landing consumer writes into <landing>/interactions/ (docs/layouts.md, section 1).
# The writer makes the name and the metadata with these functions, validation reads them back.

LIVE_SOURCE = "events"
"""``recsys.source`` of a live part."""
LIVE_PART_COLUMNS = ("user_id", "item_id", "timestamp", "event_type", "request_id")
"""The columns of a live part, in order (``request_id`` may be null, the others never)."""

_META_SOURCE = b"recsys.source"
_META_FIRST = b"recsys.stream_first"
_META_LAST = b"recsys.stream_last"
_META_ROWS = b"recsys.events"


@dataclass(frozen=True)
class LivePart:
    """What a live part's footer says: the stream entries it holds and how many events."""

    stream_first: str
    stream_last: str
    rows: int


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A stream entry id (``"1733520000000-0"``: milliseconds, sequence) as a sortable pair.

    Raises ``ValueError`` for anything else.
    """
    ms, sep, seq = str(stream_id).partition("-")
    if not (sep and ms.isdigit() and seq.isdigit() and ms.isascii() and seq.isascii()):
        raise ValueError(f"{stream_id!r} is not a stream entry id like '1733520000000-0'")
    return int(ms), int(seq)


def live_part_name(stream_first: str, rows: int) -> str:
    """The file name of a live part: ``events-<first stream id>-<rows>.parquet``.

    Written first as a hidden file in the same folder (e.g. ``"." + name + ".tmp"``) and renamed
    to this name, so a reader sees a whole part or none.
    """
    stream_id_key(stream_first)
    return f"events-{stream_first}-{int(rows)}.parquet"


def live_part_metadata(stream_first: str, stream_last: str, rows: int) -> dict[bytes, bytes]:
    """The parquet key-value metadata that makes a parquet file a live part.

    Merge it into the arrow schema's metadata before writing, e.g.
    ``table.replace_schema_metadata({**(table.schema.metadata or {}), **live_part_metadata(a, b, n)})``.
    Raises ``ValueError`` for malformed stream ids or a negative row count.
    """
    if stream_id_key(stream_last) < stream_id_key(stream_first):
        raise ValueError(f"stream_last {stream_last!r} is before stream_first {stream_first!r}")
    if int(rows) < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    return {
        _META_SOURCE: LIVE_SOURCE.encode(),
        _META_FIRST: str(stream_first).encode(),
        _META_LAST: str(stream_last).encode(),
        _META_ROWS: str(int(rows)).encode(),
    }


def live_part(path: Path) -> Optional[LivePart]:
    """The live-part metadata of ``path`` (reads the parquet footer only), or None when the file is
    not a live part (CSV, or parquet without ``recsys.source=events``).

    Raises ``ValueError`` when the file says it is a live part but its metadata is malformed.
    """
    path = Path(path)
    if path.suffix != ".parquet":
        return None
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    if metadata.get(_META_SOURCE) != LIVE_SOURCE.encode():
        return None
    try:
        first, last, rows = (metadata[key].decode() for key in (_META_FIRST, _META_LAST, _META_ROWS))
        if not (rows.isascii() and rows.isdigit()):
            raise ValueError(f"{_META_ROWS.decode()}={rows!r} is not a row count")
        live_part_metadata(first, last, int(rows))  # the writer's own checks
    except KeyError as exc:
        raise ValueError(f"malformed live part metadata: {exc.args[0].decode()} is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed live part metadata: {exc}") from None
    return LivePart(first, last, int(rows))


def is_live_part(path: Path) -> bool:
    """True when ``path`` is a live part (see :func:`live_part`)."""
    return live_part(path) is not None


def read_file(path: Path) -> "pd.DataFrame":
    """Read one parquet or CSV file into pandas, without interpreting any column yet."""
    import pandas as pd

    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pandas()
    # CSV: id columns as text (so "001" stays "001": recsys.data.ids decides whether a column is
    # integers); pandas infers the other columns. Validation decides what is a valid id / timestamp.
    _check_csv_header(path)
    try:
        return pd.read_csv(path, low_memory=False, dtype={column: str for column in ID_COLUMNS})
    except UnicodeDecodeError:
        raise ValueError(_not_utf8(path)) from None


def _check_csv_header(path: Path) -> None:
    """Refuse a header that repeats a column name: pandas would silently rename the second one
    (``category.1``) and the file would load with a feature nobody wrote."""
    import collections
    import csv

    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    try:
        header = next(csv.reader([first.decode("utf-8-sig")]), [])
    except UnicodeDecodeError:
        return  # read_csv reports it, with its line (_not_utf8)
    repeated = [name for name, count in collections.Counter(header).items() if count > 1]
    if repeated:
        positions = [i + 1 for i, name in enumerate(header) if name == repeated[0]]
        raise ValueError(
            f"line 1: column {repeated[0]!r} appears {len(positions)} times in the header (columns "
            f"{', '.join(map(str, positions))}); column names must be unique"
        )


def _not_utf8(path: Path) -> str:
    """Where a CSV file stops being UTF-8 (pandas' own message gives an offset in a buffer, not a line)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"not UTF-8 text: line {number} has the byte 0x{line[exc.start]:02x} at byte {exc.start + 1} "
                        "of the line; save the file as UTF-8")
    return "not UTF-8 text; save the file as UTF-8"


def read_table(folder: Path, name: str) -> "pd.DataFrame":
    """Read table ``name`` from ``folder`` as one DataFrame (parts concatenated, index 0..n-1).

    Raises :class:`DataValidationError` when the table is missing or a file cannot be read.
    This reads raw values; use :func:`recsys.data.validation.validate_input` for checked,
    normalized tables.
    """
    import pandas as pd

    files = table_files(folder, name)
    if not files:
        raise DataValidationError([missing_table_message(folder, name)], folder)
    frames = []
    for path in files:
        try:
            frames.append(read_file(path))
        except Exception as exc:  # any parser error: report it with the file name
            raise DataValidationError([f"{path.name}: cannot read the file: {_one_line(exc)}"], folder)
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def missing_table_message(folder: Path, name: str) -> str:
    return f"{name}: missing table: expected {name}.parquet, {name}.csv and/or a folder {name}/ in {folder}"


@dataclass(frozen=True)
class FeatureColumns:
    """Feature columns of a users/items table (or of both), split by kind."""

    categorical: list[str]
    continuous: list[str]

    @property
    def all(self) -> list[str]:
        return self.categorical + self.continuous

    def kind(self, column: str) -> str:
        return "continuous" if column in self.continuous else "categorical"


def feature_columns(df: "pd.DataFrame", id_col: str) -> FeatureColumns:
    """Split the feature columns of a users/items table by kind.

    Floating-point columns are continuous; every other column (text, integer, boolean, ...) is
    categorical. ``id_col`` is left out of both lists.
    """
    import pandas as pd

    categorical, continuous = [], []
    for column, dtype in df.dtypes.items():
        if column == id_col:
            continue
        (continuous if pd.api.types.is_float_dtype(dtype) else categorical).append(str(column))
    return FeatureColumns(categorical, continuous)


def nullable_features(df: "pd.DataFrame", id_col: str) -> "pd.DataFrame":
    """``df`` with its integer and boolean feature columns as pandas' nullable twins (``Int64``,
    ``UInt8``, ... of the same width, ``boolean``), so they can hold an empty value (a new user's).

    The kinds do not change (:func:`feature_columns`: still categorical), nor do the values; parquet
    keeps the nullable dtypes in both runtimes. Other columns hold nulls already and stay as they are.
    """
    import numpy as np
    import pandas as pd

    nullable = {}
    for column, dtype in df.dtypes.items():
        if column == id_col or not isinstance(dtype, np.dtype):
            continue  # object, float, datetime hold nulls; extension dtypes are nullable already
        if dtype.kind == "b":
            nullable[column] = pd.BooleanDtype()
        elif dtype.kind in "iu":
            nullable[column] = pd.api.types.pandas_dtype(f"{'U' if dtype.kind == 'u' else ''}Int{dtype.itemsize * 8}")
    return df.astype(nullable) if nullable else df


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
