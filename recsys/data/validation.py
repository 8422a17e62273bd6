"""Check an input folder against the contract and return normalized tables.

:func:`validate_input` reads the three tables, runs every check, and either returns
:class:`InputTables` (ids as int64 or str, see below; ``datetime64[ns]`` UTC-naive timestamps,
``label`` as int8 when present) or raises :class:`~recsys.data.contract.DataValidationError` listing EVERY problem found,
each naming the file, the column and an example row, e.g.
``interactions.csv: column 'user_id' has 3 negative values, e.g. line 19: user_id=-4``.

Rows are located as ``row N`` (0-based) in parquet files and ``line N`` (1-based, header = line 1)
in CSV files. Every check is vectorized (pandas/numpy), so millions of rows take seconds.

Id kinds (:mod:`recsys.data.ids`). ``user_id`` and ``item_id`` are each integers or text, the same
kind in every table that holds them. Typed (parquet) values decide: integer dtypes (and integral
floats, a column with blanks) are int ids, str values string ids; an object column mixing Python
ints and strs is refused, naming a row of each, and so are two tables whose typed values disagree,
naming both files. CSV id columns are read as text and adapt to the typed kind; when every table
holding the column is CSV, the texts decide together (int when every one is an integer as written,
:func:`recsys.data.ids.csv_int_mask`; else text, so ``"001"`` stays ``"001"``).

Live rows (rows of a live part, :func:`recsys.data.contract.live_part`: events accepted live) follow
the same checks, with four differences: a ``user_id`` missing from ``users`` is a new user (returned
as :attr:`InputTables.new_users`; ingest adds it with empty features), a live row repeating an
interaction (same user_id, item_id, timestamp, event_type) is dropped with a warning, live rows get
``label`` from their ``event_type`` when the table has labels, and the table keeps ``event_type``
only when the user's own files have it (or there are none).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from recsys.data import ids
from recsys.data.contract import (
    ID,
    ID_COLUMNS,
    LABEL,
    MIN_TIMESTAMP,
    NULLABLE_TEXT,
    RESERVED_COLUMNS,
    TABLES,
    TEXT,
    TIMESTAMP,
    DataValidationError,
    LivePart,
    TableSpec,
    live_part,
    missing_table_message,
    read_file,
    stream_id_key,
    table_files,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["InputTables", "LiveEvents", "DataValidationError", "validate_input"]


@dataclass(frozen=True)
class LiveEvents:
    """What the live parts brought (the data version manifest's ``"live_events"``; zeros without any)."""

    parts: int = 0
    rows: int = 0
    """Rows read from live parts, duplicates included."""
    new_users: int = 0
    duplicates_dropped: int = 0
    newest_stream_id: Optional[str] = None
    """The newest stream entry id in any live part (None without live parts)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InputTables:
    """The three validated, normalized tables of an input folder."""

    interactions: "pd.DataFrame"
    users: "pd.DataFrame"
    items: "pd.DataFrame"
    folder: Path
    files: dict[str, list[Path]] = field(default_factory=dict)
    """table name -> the files it was read from."""
    warnings: list[str] = field(default_factory=list)
    """Things that did not stop validation (e.g. dropped extra interaction columns)."""
    id_kinds: ids.IdKinds = field(default_factory=ids.IdKinds)
    """The kinds of ``user_id`` and ``item_id`` (recorded as the data version manifest's ``"ids"``)."""
    new_users: list[Any] = field(default_factory=list)
    """Users first seen in live rows (missing from ``users``), sorted; ingest adds them with empty features."""
    live: LiveEvents = field(default_factory=LiveEvents)

    @property
    def has_labels(self) -> bool:
        """False: every interaction is a positive (implicit feedback)."""
        return "label" in self.interactions.columns

    def tables(self) -> dict[str, "pd.DataFrame"]:
        return {"interactions": self.interactions, "users": self.users, "items": self.items}


def validate_input(folder: Path, negative_event_types: Optional[Iterable[str]] = None) -> InputTables:
    """Validate the input folder; return normalized tables or raise ``DataValidationError``.

    ``negative_event_types``: the event types whose live rows get label 0 (the others 1) when the
    table has labels; default: the settings' ``negative_event_types`` (read only when needed).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataValidationError([f"{folder}: input folder does not exist"], folder)
    problems: list[str] = []
    warnings: list[str] = []
    raw: dict[str, _RawTable] = {}
    for name, spec in TABLES.items():
        table = _read(folder, spec, problems)
        if table is not None:
            log.info("read %s: %d rows from %d file(s)", name, len(table.frame), len(table.files))
            raw[name] = table

    kinds = _resolve_id_kinds(raw, problems)
    if "interactions" in raw and raw["interactions"].live_rows.any():
        _merge_live_columns(raw["interactions"], negative_event_types, warnings)
    normalized: dict[str, Any] = {}
    for name, table in raw.items():
        frame = _normalize_table(table, problems, warnings, kinds)
        if frame is not None:
            normalized[name] = frame

    _check_feature_names(raw, problems)
    new_users = _check_references(raw, problems)

    if problems:
        raise DataValidationError(problems, folder)
    for message in warnings:
        log.warning(message)
    log.info(
        "input valid: %d interactions, %d users, %d items",
        len(normalized["interactions"]),
        len(normalized["users"]),
        len(normalized["items"]),
    )
    return InputTables(
        interactions=normalized["interactions"],
        users=normalized["users"],
        items=normalized["items"],
        folder=folder,
        files={name: table.files for name, table in raw.items()},
        warnings=warnings,
        id_kinds=ids.IdKinds(**{column: kinds[column].kind for column in ID_COLUMNS}),
        new_users=new_users,
        live=_live_summary(raw["interactions"], len(new_users)),
    )


# --------------------------------------------------------------------------------------------
# Reading, and locating a row in the file it came from


@dataclass
class _RawTable:
    spec: TableSpec
    folder: Path
    files: list[Path]
    frame: "pd.DataFrame"
    part: "np.ndarray"
    """index into ``files`` for each row."""
    offset: "np.ndarray"
    """position of each row within its file."""
    live: list[Optional[LivePart]] = field(default_factory=list)
    """for each file, its live-part metadata (None: one of the user's own files)."""
    own_columns: set[str] = field(default_factory=set)
    """the columns of the user's own (not live) files."""
    dropped: Optional["np.ndarray"] = None
    """True for each live row dropped as a repeat of another interaction (not in the output)."""
    valid_columns: dict[str, Any] = field(default_factory=dict)
    """contract column -> normalized values, for the columns that passed their checks."""

    def file_label(self, part: int) -> str:
        path = self.files[part]
        try:
            return str(path.relative_to(self.folder))
        except ValueError:
            return str(path)

    @property
    def live_rows(self) -> "np.ndarray":
        """True for each row read from a live part."""
        import numpy as np

        live_parts = [i for i, part in enumerate(self.live) if part is not None]
        return np.isin(self.part, live_parts)

    @property
    def has_own_files(self) -> bool:
        return any(part is None for part in self.live)

    @property
    def text_rows(self) -> "np.ndarray":
        """True for each row read from a CSV file (its id columns are text, see read_file)."""
        import numpy as np

        csv_parts = [i for i, path in enumerate(self.files) if path.suffix == ".csv"]
        return np.isin(self.part, csv_parts)

    def where(self, row: int) -> str:
        """'<file> row N' / '<file> line N' of a row of the concatenated frame."""
        return " ".join(self.locate(row))

    @property
    def label(self) -> str:
        """How messages name the whole table: its file, its folder of parts, or both."""
        if len(self.files) == 1:
            return self.file_label(0)
        single = self.files[0].parent == self.folder
        return f"{self.file_label(0)} + {self.spec.name}/" if single else f"{self.spec.name}/"

    def locate(self, row: int) -> tuple[str, str]:
        """(file, 'row N' or 'line N') of a row of the concatenated frame."""
        part, offset = int(self.part[row]), int(self.offset[row])
        path = self.files[part]
        where = f"line {offset + 2}" if path.suffix == ".csv" else f"row {offset}"
        return self.file_label(part), where

    def problem(self, mask: Any, column: str, what: str, values: Any = None) -> Optional[str]:
        """One message for all rows in ``mask``, with the first one as the example; None if none."""
        import numpy as np

        mask = np.asarray(mask, dtype=bool)
        count = int(mask.sum())
        if count == 0:
            return None
        row = int(np.argmax(mask))
        source = self.frame[column] if values is None else values
        value = source.iloc[row] if hasattr(source, "iloc") else source[row]
        file_label, where = self.locate(row)
        return f"{file_label}: column '{column}' has {count} {what}, e.g. {where}: {column}={_show(value)}"


def _read(folder: Path, spec: TableSpec, problems: list[str]) -> Optional[_RawTable]:
    import numpy as np
    import pandas as pd

    files = table_files(folder, spec.name)
    if not files:
        problems.append(missing_table_message(folder, spec.name))
        return None
    # The list is taken once: this table is exactly these files (ingest hashes the same list), and a
    # part renamed into the folder from now on waits for the next run.
    frames, live, own_columns = [], [], set()
    for path in files:
        label = path.relative_to(folder) if path.is_relative_to(folder) else path
        try:
            frame = read_file(path)
        except Exception as exc:  # parser errors of any kind: report with the file name
            problems.append(f"{label}: cannot read the file: {_one_line(exc)}")
            return None
        try:
            part = live_part(path) if spec.name == "interactions" else None
        except ValueError as exc:
            problems.append(f"{label}: {exc}")
            return None
        # a live part always carries event_type (its label follows from it)
        required = list(spec.required) + (["event_type"] if part is not None else [])
        missing = [c for c in required if c not in frame.columns]
        for column in missing:
            problems.append(
                f"{label}: missing required column '{column}' (columns found: {', '.join(map(str, frame.columns)) or 'none'})"
            )
        if missing:
            return None
        if part is not None and part.rows != len(frame):
            problems.append(f"{label}: the live part's metadata says recsys.events={part.rows} but it holds {len(frame)} rows")
            return None
        if part is None:
            own_columns.update(map(str, frame.columns))
        elif "label" in frame.columns:
            frame = frame.drop(columns="label")  # never carried by live parts; live labels follow event_type
        frames.append(frame)
        live.append(part)
    sizes = [len(f) for f in frames]
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    part = np.repeat(np.arange(len(frames), dtype=np.int32), sizes)
    offset = np.arange(len(frame), dtype=np.int64) - np.repeat(np.cumsum([0] + sizes[:-1]), sizes)
    table = _RawTable(spec, folder, files, frame.reset_index(drop=True), part, offset, live, own_columns)
    table.dropped = np.zeros(len(frame), dtype=bool)
    if len(frame) == 0:
        problems.append(f"{table.label}: table is empty (0 rows)")
        return None
    return table


# --------------------------------------------------------------------------------------------
# Per-table checks and normalization


def _normalize_table(
    table: _RawTable, problems: list[str], warnings: list[str], id_kinds: dict[str, "_IdKind"]
) -> Optional["pd.DataFrame"]:
    import numpy as np
    import pandas as pd

    spec = table.spec
    out: dict[str, Any] = {}
    ok = True
    for column, kind in spec.contract_columns.items():
        if column not in table.frame.columns:
            continue
        if kind == ID:
            values = _check_id(table, column, problems, id_kinds[column])
        else:
            values = _CHECKS[kind](table, column, problems)
        if values is None:
            ok = False
        else:
            out[column] = values
            table.valid_columns[column] = values

    if spec.unique_key and spec.unique_key in out:
        ok &= _check_unique(table, spec.unique_key, out[spec.unique_key], problems)

    extra = [c for c in table.frame.columns if c not in spec.contract_columns]
    if spec.allows_features:
        for column in extra:
            if not isinstance(column, str) or column in RESERVED_COLUMNS:
                problems.append(
                    f"{table.label}: feature column {column!r} uses a reserved name "
                    f"({', '.join(sorted(RESERVED_COLUMNS))}); rename it"
                )
                ok = False
                continue
            out[column] = _normalize_feature(table.frame[column])
            if pd.api.types.is_float_dtype(out[column].dtype):
                # NaN is an empty feature; an infinity would turn the ETL's normalization into NaN everywhere
                infinite = np.isinf(out[column].to_numpy(dtype="float64", na_value=np.nan))
                if _extend(problems, [table.problem(infinite, column, "infinite values (a number feature must be "
                                                                       "finite; leave it empty for none)")]):
                    ok = False
    elif extra:
        warnings.append(
            f"{table.label}: extra columns {', '.join(map(str, extra))} are not part of the "
            f"{spec.name} contract and were dropped"
        )

    if spec.name == "interactions":
        keys = {c: out.get(c, table.frame[c]) for c in spec.contract_columns if c in table.frame.columns}
        ok &= _check_duplicate_interactions(table, keys, problems, warnings)
    if not ok:
        return None
    frame = pd.DataFrame(out)
    if table.dropped.any():
        frame = frame[~table.dropped].reset_index(drop=True)
    return frame


@dataclass(frozen=True)
class _IdKind:
    """The kind an id column has in every table (None: undecidable, a problem says why)."""

    kind: Optional[str]
    decided_by: str = ""
    """The typed file that decided it ("" when CSV text decided, or nothing had to)."""


def _resolve_id_kinds(raw: dict[str, _RawTable], problems: list[str]) -> dict[str, _IdKind]:
    """The kind of each id column, agreed over every table holding it (see the module docstring)."""
    kinds: dict[str, _IdKind] = {}
    for column in ID_COLUMNS:
        holders = [table for table in raw.values() if column in table.frame.columns]
        typed: dict[str, tuple[_RawTable, int]] = {}  # kind -> (first table, example row)
        refused = False
        for table in holders:
            found = _typed_kind(table, column, problems)
            if found is False:
                refused = True
            elif found is not None:
                typed.setdefault(found[0], (table, found[1]))
        if refused:
            kinds[column] = _IdKind(None)
        elif len(typed) > 1:
            (int_table, int_row), (str_table, str_row) = typed[ids.INT], typed[ids.STRING]
            problems.append(
                f"{str_table.locate(str_row)[0]}: column '{column}' holds text ids "
                f"(e.g. {str_table.locate(str_row)[1]}: {column}={_show(str_table.frame[column].iloc[str_row])}) but "
                f"{int_table.locate(int_row)[0]} holds integer ids "
                f"(e.g. {int_table.locate(int_row)[1]}: {column}={_show(int_table.frame[column].iloc[int_row])}); "
                f"{column} must be of one kind in every table: store it as integers everywhere or as text everywhere"
            )
            kinds[column] = _IdKind(None)
        elif typed:
            kind, (table, row) = next(iter(typed.items()))
            kinds[column] = _IdKind(kind, table.locate(row)[0])
        else:
            kinds[column] = _IdKind(ids.csv_kind(table.frame[column][table.text_rows] for table in holders))
    return kinds


def _typed_kind(table: _RawTable, column: str, problems: list[str]) -> Any:
    """The kind the typed (non-CSV) rows of an id column have: ``(kind, example row)``, None when
    the table has no typed rows (or only nulls), False when refused (a problem is appended)."""
    import numpy as np
    import pandas as pd

    typed = ~table.text_rows
    if not typed.any():
        return None
    series = table.frame[column]
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        # booleans and fractions are int-kind mistakes, refused by the integer checks with their rows
        return ids.INT, int(np.argmax(typed))
    values = series.astype(object).where(typed, None)
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    simple = {"string": ids.STRING, "integer": ids.INT, "floating": ids.INT, "mixed-integer-float": ids.INT, "boolean": ids.INT}
    if inferred == "empty":
        return None
    if inferred in simple:
        return simple[inferred], int(np.argmax(values.notna().to_numpy()))
    present = values.notna().to_numpy()
    is_int = np.fromiter(
        (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values), bool, len(values)
    )
    is_str = np.fromiter((isinstance(v, str) for v in values), bool, len(values))
    if is_int.any() and is_str.any():
        int_row, str_row = int(np.argmax(is_int)), int(np.argmax(is_str))
        problems.append(
            f"{table.label}: column '{column}' mixes integer and text ids ({int(is_int.sum())} integers, "
            f"{int(is_str.sum())} texts), e.g. {table.where(int_row)}: {column}={_show(values.iloc[int_row])} and "
            f"{table.where(str_row)}: {column}={_show(values.iloc[str_row])}; store every id as an integer or every id as text"
        )
        return False
    other = present & ~is_int & ~is_str
    if other.any():
        row = int(np.argmax(other))
        problems.append(
            f"{table.label}: column '{column}' has {int(other.sum())} values that are neither integers nor text "
            f"({type(values.iloc[row]).__name__}), e.g. {table.where(row)}: {column}={_show(values.iloc[row])}"
        )
        return False
    kind = ids.STRING if is_str.any() else ids.INT
    return kind, int(np.argmax(is_str if is_str.any() else is_int))


def _check_id(table: _RawTable, column: str, problems: list[str], kind: _IdKind) -> Optional["pd.Series"]:
    """An id column in the kind agreed over the tables: int64 (>= 0) or str (recsys.data.ids rules)."""
    if kind.kind is None:
        return None  # the kind itself was refused (the problem is listed)
    if kind.kind == ids.STRING:
        return _check_string_id(table, column, problems)
    return _check_int_id(table, column, problems, kind.decided_by)


def _check_int_id(table: _RawTable, column: str, problems: list[str], decided_by: str) -> Optional["pd.Series"]:
    """Integer >= 0, no nulls -> int64."""
    import numpy as np
    import pandas as pd

    series = table.frame[column]
    found: list[Optional[str]] = []
    null = series.isna().to_numpy()
    found.append(table.problem(null, column, "null values"))
    if pd.api.types.is_bool_dtype(series.dtype):
        found.append(table.problem(~null, column, "non-integer values (booleans)"))
        _extend(problems, found)
        return None
    if pd.api.types.is_integer_dtype(series.dtype):
        numbers = series.astype("float64") if null.any() else series
    else:
        if pd.api.types.is_float_dtype(series.dtype):  # a typed column with blanks
            numbers = series
        else:  # CSV text (integers as written, recsys.data.ids.csv_int_mask) and/or typed values
            text = table.text_rows
            numbers = pd.to_numeric(series.where(~text, None), errors="coerce").astype("float64")
            if text.any():
                numbers = numbers.where(~text, ids.csv_numbers(series.where(text, None)))
        numbers = numbers.astype("float64")
        as_float = numbers.to_numpy()
        with np.errstate(invalid="ignore"):
            not_integer = ~null & (np.isnan(as_float) | ~np.isfinite(as_float) | (np.mod(as_float, 1) != 0))
        hint = f" (ids of this column are integers, as in {decided_by})" if decided_by and table.text_rows.any() else ""
        found.append(table.problem(not_integer, column, "non-integer values" + hint))
    with np.errstate(invalid="ignore"):
        negative = ~null & (numbers.to_numpy() < 0)
    found.append(table.problem(negative, column, "negative values", numbers))
    if _extend(problems, found):
        return None
    return numbers.astype("int64").reset_index(drop=True)


def _check_string_id(table: _RawTable, column: str, problems: list[str]) -> Optional["pd.Series"]:
    """Text obeying the string id rules (recsys.data.ids), no nulls -> str, kept exactly as written."""
    series = table.frame[column].astype(object)
    null = series.isna().to_numpy()
    found: list[Optional[str]] = [table.problem(null, column, "null values")]
    # every value is a str here: typed text, or CSV text (numbers of a typed int table never get here)
    for what, mask in ids.string_id_problems(series):
        found.append(table.problem(mask, column, what))
    if _extend(problems, found):
        return None
    return series.reset_index(drop=True)


def _check_timestamp(table: _RawTable, column: str, problems: list[str]) -> Optional["pd.Series"]:
    """datetime / unix seconds / ISO-8601 text -> datetime64[ns], UTC, naive; within range."""
    import numpy as np
    import pandas as pd

    series = table.frame[column]
    null = series.isna().to_numpy()
    found: list[Optional[str]] = [table.problem(null, column, "null values")]
    low = pd.Timestamp(MIN_TIMESTAMP)
    high = pd.Timestamp.now(tz="UTC").tz_localize(None) + pd.Timedelta(days=1)
    dtype = series.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        parsed = series
        if getattr(dtype, "tz", None) is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        parsed = parsed.astype("datetime64[ns]")
    elif pd.api.types.is_bool_dtype(dtype):
        found.append(table.problem(~null, column, "values that are not timestamps (booleans)"))
        _extend(problems, found)
        return None
    elif pd.api.types.is_numeric_dtype(dtype):
        # unix seconds; compare as numbers first so absurd values cannot overflow the conversion
        seconds = series.astype("float64").to_numpy()
        out_of_range = ~null & ((seconds < low.timestamp()) | (seconds > high.timestamp()))
        found.append(
            table.problem(
                out_of_range, column, f"timestamps (unix seconds) before {MIN_TIMESTAMP} or more than 1 day in the future"
            )
        )
        if _extend(problems, found):
            return None
        seconds_series = series.astype("int64") if pd.api.types.is_integer_dtype(dtype) else series.astype("float64")
        return pd.Series(pd.to_datetime(seconds_series, unit="s")).astype("datetime64[ns]").reset_index(drop=True)
    else:
        parsed = _parse_datetime_text(series.astype(object).where(~null, None))
        unparsed = ~null & parsed.isna().to_numpy()
        found.append(
            table.problem(
                unparsed, column, "values that are not timestamps (expected datetime, unix seconds or ISO-8601 text)"
            )
        )
    as_ns = parsed.to_numpy(dtype="datetime64[ns]")
    with np.errstate(invalid="ignore"):
        out_of_range = ~null & ((as_ns < low.to_datetime64()) | (as_ns > high.to_datetime64()))
    found.append(
        table.problem(out_of_range, column, f"timestamps before {MIN_TIMESTAMP} or more than 1 day in the future")
    )
    if _extend(problems, found):
        return None
    return pd.Series(as_ns).reset_index(drop=True)


def _parse_datetime_text(text: "pd.Series") -> "pd.Series":
    """Parse ISO-8601 text (or unix seconds as text) to UTC-naive datetimes; unparseable -> NaT."""
    import pandas as pd

    seconds = pd.to_numeric(text, errors="coerce")
    numeric = seconds.notna()
    if numeric.any():
        # seconds within pandas' datetime range only; the rest become NaT (reported as not timestamps)
        seconds = seconds.where((seconds.abs() < 9e9), float("nan"))
        from_seconds = pd.to_datetime(seconds, unit="s")
        from_text = _parse_iso_text(text.where(~numeric, None))
        return from_text.where(~numeric, from_seconds)
    return _parse_iso_text(text)


def _parse_iso_text(text: "pd.Series") -> "pd.Series":
    import pandas as pd

    kwargs: dict[str, Any] = {"errors": "coerce", "utc": True}
    if int(pd.__version__.split(".")[0]) >= 2:
        kwargs["format"] = "ISO8601"  # pandas 2 otherwise guesses one format from the first value
    try:
        parsed = pd.to_datetime(text, **kwargs)
    except (ValueError, TypeError, OverflowError):
        # mixed garbage pandas refuses wholesale: parse value by value
        parsed = pd.Series([_parse_one(v) for v in text], index=text.index, dtype="datetime64[ns, UTC]")
    return parsed.dt.tz_localize(None)


def _parse_one(value: Any) -> Any:
    import pandas as pd

    try:
        return pd.Timestamp(value).tz_localize("UTC") if pd.Timestamp(value).tzinfo is None else pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


def _check_text(table: _RawTable, column: str, problems: list[str]) -> Optional["pd.Series"]:
    """Any non-null value -> str."""
    series = table.frame[column]
    null = series.isna().to_numpy()
    if _extend(problems, [table.problem(null, column, "null values")]):
        return None
    return series.astype(str).astype(object).reset_index(drop=True)


def _check_nullable_text(table: _RawTable, column: str, problems: list[str]) -> Optional["pd.Series"]:
    """Any value -> str; nulls kept (None)."""
    series = table.frame[column].astype(object)
    present = series.notna()
    return series.where(~present, series.astype(str)).where(present, None).reset_index(drop=True)


def _check_label(table: _RawTable, column: str, problems: list[str]) -> Optional["pd.Series"]:
    """0/1 (or booleans) -> int8."""
    import numpy as np
    import pandas as pd

    series = table.frame[column]
    null = series.isna().to_numpy()
    found: list[Optional[str]] = [table.problem(null, column, "null values")]
    if pd.api.types.is_bool_dtype(series.dtype):
        numbers = series.astype("float64")
    else:
        numbers = pd.to_numeric(series, errors="coerce").astype("float64")
    not_binary = ~null & ~np.isin(numbers.to_numpy(), [0.0, 1.0])
    found.append(table.problem(not_binary, column, "values other than 0 and 1"))
    if _extend(problems, found):
        return None
    return numbers.astype("int8").reset_index(drop=True)


_CHECKS = {  # ids: _check_id
    TIMESTAMP: _check_timestamp,
    TEXT: _check_text,
    NULLABLE_TEXT: _check_nullable_text,
    LABEL: _check_label,
}


def _check_unique(table: _RawTable, column: str, values: "pd.Series", problems: list[str]) -> bool:
    import numpy as np

    duplicated = values.duplicated(keep="first").to_numpy()
    message = table.problem(duplicated, column, "duplicate values", values)
    if message is None:
        return True
    first_dup = int(np.argmax(duplicated))
    original = int(np.argmax((values == values.iloc[first_dup]).to_numpy()))
    problems.append(f"{message} (first seen at {' '.join(table.locate(original))})")
    return False


def _check_duplicate_interactions(
    table: _RawTable, columns: dict[str, Any], problems: list[str], warnings: list[str]
) -> bool:
    """Repeated rows in the user's own files are a problem; a live row repeating an interaction is
    the same event delivered twice: dropped (``table.dropped``) with a warning."""
    import numpy as np
    import pandas as pd

    # request_id attributes an event, it is not part of what the event is
    frame = pd.DataFrame({c: v for c, v in columns.items() if c != "request_id"})
    live = table.live_rows
    if live.any():
        # the same user, item, time and type (a live row's label follows from its type; without a
        # kept event_type, the label is what still tells two events apart)
        key = ["user_id", "item_id", "timestamp"]
        key += ["event_type"] if "event_type" in frame.columns else ["label"] if "label" in frame.columns else []
        # the user's rows first: a live row goes when its event is in the user's files or in an earlier live row
        order = np.concatenate([np.flatnonzero(~live), np.flatnonzero(live)])
        repeated = np.zeros(len(frame), dtype=bool)
        repeated[order] = frame[key].iloc[order].duplicated(keep="first").to_numpy()
        table.dropped = repeated & live
        if table.dropped.any():
            row = int(np.argmax(table.dropped))
            original = _first_same(frame[key], row, ~table.dropped)
            file_label, where = table.locate(row)
            warnings.append(
                f"{file_label}: {int(table.dropped.sum())} live event rows repeat an interaction (same "
                f"{', '.join(key)}) and were dropped, e.g. {where}: {_shown(frame[key], row)} repeats "
                f"{' '.join(table.locate(original))}"
            )
    if live.any():
        duplicated = np.zeros(len(frame), dtype=bool)
        duplicated[~live] = frame[~live].duplicated(keep="first").to_numpy()
    else:
        duplicated = frame.duplicated(keep="first").to_numpy()
    count = int(duplicated.sum())
    if count == 0:
        return True
    row = int(np.argmax(duplicated))
    original = _first_same(frame, row, ~live)
    file_label, where = table.locate(row)
    problems.append(
        f"{file_label}: {count} duplicate interaction rows (same {', '.join(frame.columns)}), "
        f"e.g. {where}: {_shown(frame, row)} repeats {' '.join(table.locate(original))}"
    )
    return False


def _first_same(frame: "pd.DataFrame", row: int, among: "np.ndarray") -> int:
    """The first row among ``among`` equal to ``row`` in every column of ``frame``."""
    import numpy as np

    example = frame.iloc[row]
    same = among.copy()
    for column in frame.columns:
        same &= (frame[column] == example[column]).to_numpy()
    return int(np.argmax(same))


def _shown(frame: "pd.DataFrame", row: int) -> str:
    return ", ".join(f"{c}={_show(frame[c].iloc[row])}" for c in frame.columns)


def _normalize_feature(series: "pd.Series") -> "pd.Series":
    """Text-like feature columns become object columns of str (nulls kept); others unchanged."""
    import pandas as pd

    dtype = series.dtype
    text_like = (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
    )
    if not text_like:
        return series.reset_index(drop=True)
    values = series.astype(object)
    present = values.notna()
    values = values.where(~present, values.astype(str))
    return values.where(present, None).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Checks across tables


def _check_feature_names(raw: dict[str, _RawTable], problems: list[str]) -> None:
    """User and item features are joined onto the same rows later: their names must differ."""
    if "users" not in raw or "items" not in raw:
        return
    user_features = set(raw["users"].frame.columns) - set(TABLES["users"].contract_columns)
    item_features = set(raw["items"].frame.columns) - set(TABLES["items"].contract_columns)
    for column in sorted(user_features & item_features, key=str):
        problems.append(
            f"{raw['items'].label}: feature column '{column}' also exists in {raw['users'].label}; "
            "user and item feature names must differ (they are joined onto the same rows)"
        )


def _check_references(raw: dict[str, _RawTable], problems: list[str]) -> list[Any]:
    """Interactions must reference known users and items; returns the new users (sorted): those only
    live rows reference (a user first seen live is no mistake; one in the user's own files is)."""
    import numpy as np

    interactions = raw.get("interactions")
    if interactions is None:
        return []
    new_users: list[Any] = []
    for entity, column in (("users", "user_id"), ("items", "item_id")):
        known_table = raw.get(entity)
        if known_table is None or column not in known_table.valid_columns:
            continue
        if column not in interactions.valid_columns:
            continue
        # the normalized id columns exist even when another check of the table failed
        ids = interactions.valid_columns[column]
        known = known_table.valid_columns[column]
        unknown = ~ids.isin(known).to_numpy() & ~interactions.dropped
        if column == "user_id":
            new = unknown & interactions.live_rows
            new_users = sorted(ids[new].unique().tolist())
            unknown &= ~new
        count = int(unknown.sum())
        if count == 0:
            continue
        distinct = int(ids[unknown].nunique())
        row = int(np.argmax(unknown))
        file_label, where = interactions.locate(row)
        problems.append(
            f"{file_label}: column '{column}' has {count} rows referencing {distinct} {column} value(s) "
            f"missing from {known_table.label}, e.g. {where}: {column}={_show(ids.iloc[row])}"
        )
    return new_users


# --------------------------------------------------------------------------------------------
# Live rows


def _merge_live_columns(table: _RawTable, negative_event_types: Optional[Iterable[str]], warnings: list[str]) -> None:
    """Fit the live rows into the columns of the user's own files, before the checks: live rows get
    ``label`` from their ``event_type`` when the user's files have labels (0 for a negative type, else
    1), and ``event_type`` is kept only when the user's files have it too (else the user's rows would
    be null there). Without own files, the live parts' columns are the table's."""
    import numpy as np

    if not table.has_own_files:
        return
    if negative_event_types is None:
        from recsys.settings import get_settings

        negative_event_types = get_settings().negative_event_type_list
    live = table.live_rows
    negative = table.frame["event_type"].isin(list(negative_event_types)).to_numpy()
    if "label" in table.own_columns:
        # object: the user's column may be text or booleans; the label check normalizes it
        table.frame["label"] = table.frame["label"].astype(object).where(~live, np.where(negative, 0, 1))
    elif (live & negative).any():
        # without labels every row is a positive: a shown-and-ignored event must not train as one
        left_out = live & negative
        warnings.append(
            f"{table.label}: {int(left_out.sum())} live rows of event types {', '.join(sorted(negative_event_types))} "
            f"were left out: the data has no label column, so they would count as engagements"
        )
        _keep_rows(table, ~left_out)
        live = table.live_rows
    frame = table.frame
    if "event_type" not in table.own_columns:
        own_file = table.file_label(table.live.index(None))
        warnings.append(
            f"{table.label}: the event_type of {int(live.sum())} live rows was not kept: "
            f"{own_file} has no event_type column"
        )
        table.frame = frame.drop(columns="event_type")


def _keep_rows(table: _RawTable, keep: "np.ndarray") -> None:
    """Only the rows of ``keep`` stay in the table (each still located in its file)."""
    table.frame = table.frame[keep].reset_index(drop=True)
    table.part, table.offset, table.dropped = table.part[keep], table.offset[keep], table.dropped[keep]


def _live_summary(table: _RawTable, new_users: int) -> LiveEvents:
    parts = [part for part in table.live if part is not None]
    if not parts:
        return LiveEvents()
    return LiveEvents(
        parts=len(parts),
        rows=sum(part.rows for part in parts),
        new_users=new_users,
        duplicates_dropped=int(table.dropped.sum()),
        newest_stream_id=max((part.stream_last for part in parts), key=stream_id_key),
    )


# --------------------------------------------------------------------------------------------
# Small helpers


def _extend(problems: list[str], found: list[Optional[str]]) -> bool:
    """Append the non-None messages; True if there were any."""
    real = [m for m in found if m]
    problems.extend(real)
    return bool(real)


def _show(value: Any) -> str:
    """A value as it appears in messages: numbers plain, text quoted, nulls as null."""
    try:
        import pandas as pd

        if pd.isna(value):
            return "null"
    except (TypeError, ValueError):
        pass
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
    if hasattr(value, "isoformat"):
        return str(value)
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
