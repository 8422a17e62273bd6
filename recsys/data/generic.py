"""Import a user's own event log (CSV or parquet) whose columns they name: ``recsys data import``.

    recsys data import --interactions events.csv --user-col customer --item-col sku --time-col ts \\
        [--event-col type] [--label-col clicked] [--users users.csv --users-id-col customer] \\
        [--items items.parquet --items-id-col sku] --out FOLDER

writes the input contract (docs/layouts.md, section 1) with the shared writer
(:func:`recsys.data.importing.write_input_folder`). What it does with what real logs hold:

* **ids** are kept exactly as written: CSV id columns are read as text, so ``001`` stays ``001`` and
  SKUs such as ``85123A`` or UUIDs stay text; an entity's ids become int64 only when EVERY value (in
  the interactions and in its users/items table) is a canonical integer (``0``, ``42``, ``-7``; not
  ``007``, ``1.0`` or ``+3``). Only empty fields and null tokens (``null``, ``NULL``, ``None``, ``NaN``,
  ``N/A``, ...) are null; ``NA`` is an id (a country code, an SKU). Text ids are pandas categoricals
  in memory and plain strings in the parquet files.
* **timestamps**: datetimes (parquet), ISO-8601 text (an offset is converted to UTC; none is taken
  as UTC), or unix epochs. The epoch unit is ``--time-unit`` (s, ms, us, ns) or detected from the
  median magnitude (< 1e11: seconds, < 1e14: milliseconds, < 1e17: microseconds, else nanoseconds;
  1e11 s is the year 5138, 1e11 ms is 1973) and logged.
* **invalid rows** (a null or blank user/item id, a null or unparseable timestamp or one before
  1990-01-01 or more than a day ahead, a null event type, a label other than 0/1/true/false, a
  user/item missing from the users/items table) are refused with the row; ``--drop-invalid`` drops
  them and counts them by reason.
* **duplicate events** (the same values in every imported column) are refused with an example;
  ``--drop-duplicates`` keeps the first of each and counts the rest. The same for exact duplicate
  rows of the users/items tables; one id with two different rows is always refused.
* **extra columns** of the interactions are not imported (a warning names them: features belong in
  the users/items tables); every other column of the users/items tables is a feature (float =
  continuous, the rest categorical). A feature named like a contract column (``label``,
  ``timestamp``, ...) or like a feature of the other table gets the table's prefix (``item_label``,
  ``user_category``), with a warning.
* **no users/items table**: one holding only the ids seen in the interactions (sorted) is written.

Every problem is reported at once, each naming the file, the line (CSV; header = line 1) or row
(parquet; 0-based), the column and the value.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from recsys.data.contract import MIN_TIMESTAMP, RESERVED_COLUMNS
from recsys.data.importing import (
    CHUNK_ROWS,
    ID_NULLS,
    ImportResult,
    InputFormatError,
    SourceTable,
    check_output_folder,
    read_header,
    read_source,
    write_input_folder,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

TIME_UNITS = ("auto", "s", "ms", "us", "ns")
_UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
# (upper bound of the median |value|, unit): see the module docstring
_UNIT_BY_MAGNITUDE = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (float("inf"), "ns"))
_CANONICAL_INT = r"-?(?:0|[1-9][0-9]{0,17})"  # fits int64; no sign, leading zeros or decimals
# ISO-8601 date with optional time, fraction and offset: the only text accepted as a timestamp,
# so that both runtimes' pandas (1.5 and 2.x) accept exactly the same values
_ISO = re.compile(r"^\s*\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)?\s*$")
_LABELS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}


@dataclass(frozen=True)
class ImportSpec:
    """What to import: the files, and which of their columns play which contract role."""

    interactions: Path
    user_col: str
    item_col: str
    time_col: str
    event_col: Optional[str] = None
    label_col: Optional[str] = None
    users: Optional[Path] = None
    users_id_col: Optional[str] = None
    """default: ``user_col``"""
    items: Optional[Path] = None
    items_id_col: Optional[str] = None
    """default: ``item_col``"""
    time_unit: str = "auto"
    drop_duplicates: bool = False
    drop_invalid: bool = False
    chunk_rows: int = CHUNK_ROWS

    def roles(self) -> dict[str, str]:
        """contract column -> the interactions file's column, for the roles that are mapped."""
        roles = {"user_id": self.user_col, "item_id": self.item_col, "timestamp": self.time_col}
        if self.event_col:
            roles["event_type"] = self.event_col
        if self.label_col:
            roles["label"] = self.label_col
        return roles


@dataclass
class _Report:
    """What the import found and did, for the log, the CLI and ``import.json``."""

    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    detected: dict[str, Any] = field(default_factory=dict)
    rows_read: dict[str, int] = field(default_factory=dict)

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)

    def drop(self, reason: str, count: int) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(count)


# ------------------------------------------------------------------------------------------
# Entry points


def import_tables(spec: ImportSpec, out_dir: Path, force: bool = False) -> ImportResult:
    """Read the files of ``spec`` and write the contract tables into ``out_dir`` (atomically).

    Raises :class:`~recsys.data.importing.InputFormatError` listing every problem (nothing is
    written), or :class:`~recsys.data.importing.OutputExistsError` for a non-empty ``out_dir``
    without ``force``.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir, force)  # before reading: a wrong --out fails at once
    started = time.monotonic()
    tables, metadata = read_tables(spec)
    metadata["read_seconds"] = round(time.monotonic() - started, 3)
    rows = write_input_folder(out_dir, tables, force=force, metadata=metadata)
    log.info("imported %s into %s in %.1f s: %s", spec.interactions, out_dir, time.monotonic() - started, rows)
    return ImportResult(out_dir, rows, metadata)


def read_tables(spec: ImportSpec) -> tuple[dict[str, "pd.DataFrame"], dict[str, Any]]:
    """The three contract tables of ``spec`` (no writing) and the import's metadata."""
    import numpy as np
    import pandas as pd

    if spec.time_unit not in TIME_UNITS:
        raise InputFormatError(f"--time-unit must be one of {', '.join(TIME_UNITS)}, got {spec.time_unit!r}")
    report = _Report()
    interactions = _read_interactions(spec, report)
    entity_tables = {
        "users": _read_entities(spec.users, spec.users_id_col or spec.user_col, "user", spec, report),
        "items": _read_entities(spec.items, spec.items_id_col or spec.item_col, "item", spec, report),
    }
    _rename_features(entity_tables, report)
    if report.problems:  # unreadable files or missing columns: nothing more can be checked
        raise InputFormatError(report.problems)

    roles = spec.roles()
    columns: dict[str, Any] = {}
    invalid: dict[str, Any] = {}  # reason -> rows of the interactions
    frame = interactions.frame
    for role in ("user_id", "item_id"):
        ids, bad = _id_values(frame[roles[role]])
        columns[role] = ids
        invalid[f"a null or blank {roles[role]!r}"] = ids.isna().to_numpy() & ~bad
        invalid[f"a non-integer number as {roles[role]!r}"] = bad
    stamps, bad_time, out_of_range = _timestamps(frame[roles["timestamp"]], spec.time_unit, interactions, roles["timestamp"], report)
    columns["timestamp"] = stamps
    invalid[f"a null {roles['timestamp']!r}"] = frame[roles["timestamp"]].isna().to_numpy()
    invalid[f"a {roles['timestamp']!r} that is not a timestamp (ISO-8601 text or a unix epoch)"] = bad_time
    invalid[f"a {roles['timestamp']!r} before {MIN_TIMESTAMP} or more than a day in the future"] = out_of_range
    if "event_type" in roles:
        events = _text_values(frame[roles["event_type"]])
        columns["event_type"] = events
        invalid[f"a null or blank {roles['event_type']!r}"] = events.isna().to_numpy()
    if "label" in roles:
        labels, bad_label = _labels(frame[roles["label"]])
        columns["label"] = labels
        invalid[f"a {roles['label']!r} other than 0/1/true/false"] = bad_label

    # ids missing from a users/items table the user gave
    for role, name in (("user_id", "users"), ("item_id", "items")):
        table = entity_tables[name]
        if table is not None:
            # compared per distinct id (the categories), not per row: a large log has few distinct ids
            ids = columns[role]
            known = ids.cat.categories.isin(table.ids.cat.remove_unused_categories().cat.categories)
            codes = ids.cat.codes.to_numpy()
            missing = (codes >= 0) & ~np.append(known, True)[codes]  # code -1 (null): counted as null above
            invalid[f"a {roles[role]!r} missing from {table.source.name}"] = missing

    keep = _apply_invalid(interactions, invalid, list(roles.values()), spec.drop_invalid, report)
    out = pd.DataFrame({role: values[keep].reset_index(drop=True) for role, values in columns.items()})
    kept = interactions.take(keep)
    out = _deduplicate_events(out, kept, roles, spec.drop_duplicates, report)
    if len(out) == 0 and not report.problems:
        report.problems.append(f"{interactions.name}: no interactions left to import")
    if report.problems:
        raise InputFormatError(report.problems)

    tables: dict[str, pd.DataFrame] = {}
    for role, name in (("user_id", "users"), ("item_id", "items")):
        table = entity_tables[name]
        ids = out[role]
        if table is None:
            entity = pd.DataFrame({role: _sorted_unique(ids)})
        else:
            entity = table.frame(role)
        id_type = _decide_id_type(ids, entity[role])
        report.detected[f"{role}_type"] = id_type
        if id_type == "int64":
            out[role] = _as_int64(ids)
            entity[role] = _as_int64(entity[role])
        tables[name] = entity.reset_index(drop=True)
        log.info("%s: %d rows, ids %s%s", name, len(entity), id_type,
                 "" if table is not None else f" (no {name} table given: the ids of the interactions)")
    tables["interactions"] = out
    if report.problems:
        raise InputFormatError(report.problems)

    metadata = {
        "importer": "generic",
        "sources": {
            "interactions": str(Path(spec.interactions).resolve()),
            "users": str(Path(spec.users).resolve()) if spec.users else None,
            "items": str(Path(spec.items).resolve()) if spec.items else None,
        },
        "columns": {**roles, "users_id": spec.users_id_col or spec.user_col, "items_id": spec.items_id_col or spec.item_col},
        "rows_read": report.rows_read,
        "dropped": report.dropped,
        "detected": report.detected,
        "warnings": report.warnings,
    }
    return tables, metadata


# ------------------------------------------------------------------------------------------
# Reading


def _read_interactions(spec: ImportSpec, report: _Report) -> SourceTable:
    roles = spec.roles()
    header = read_header(spec.interactions)
    flags = {"user_id": "--user-col", "item_id": "--item-col", "timestamp": "--time-col",
             "event_type": "--event-col", "label": "--label-col"}
    name = Path(spec.interactions).name
    for role, column in roles.items():
        if column not in header:
            report.problems.append(
                f"{name}: no column {column!r} ({flags[role]}); columns found: {', '.join(header) or 'none'}"
            )
    repeated = {c for c in roles.values() if list(roles.values()).count(c) > 1}
    for column in sorted(repeated):
        report.problems.append(f"{name}: column {column!r} is given for more than one role ({', '.join(r for r, c in roles.items() if c == column)})")
    if report.problems:
        raise InputFormatError(report.problems)
    extra = [c for c in header if c not in roles.values()]
    if extra:
        report.warn(
            f"{name}: columns {', '.join(extra)} are not part of the interactions contract and were not imported "
            "(user and item features belong in --users / --items tables)"
        )
    categorical = {roles["user_id"], roles["item_id"], roles.get("event_type"), roles.get("label")} - {None}
    table = read_source(spec.interactions, list(roles.values()), categorical=categorical, label=name,
                        chunk_rows=spec.chunk_rows)
    report.rows_read["interactions"] = len(table.frame)
    if len(table.frame) == 0:
        raise InputFormatError(f"{table.name}: the table is empty (0 rows)")
    return table


@dataclass
class _EntityTable:
    """A users or items table as read: its source, id column and feature columns (possibly renamed)."""

    source: SourceTable
    id_col: str
    kind: str  # "user" | "item"
    features: dict[str, str]
    """file column -> output column"""
    ids: "pd.Series"

    def frame(self, role: str) -> "pd.DataFrame":
        import pandas as pd

        data = {role: self.ids}
        for column, renamed in self.features.items():
            data[renamed] = self.source.frame[column]
        return pd.DataFrame(data)


def _read_entities(path: Optional[Path], id_col: str, kind: str, spec: ImportSpec, report: _Report) -> Optional[_EntityTable]:
    """A users/items table: null ids, exact duplicates and conflicting duplicates handled here."""
    import numpy as np

    if path is None:
        return None
    header = read_header(path)
    flag = f"--{kind}s-id-col"
    if id_col not in header:
        report.problems.append(f"{Path(path).name}: no column {id_col!r} ({flag}); columns found: {', '.join(header) or 'none'}")
        return None
    # read at once (no chunks): pandas infers each feature column's type over the whole file
    table = read_source(path, None, categorical={id_col}, nulls={id_col: ID_NULLS}, chunk_rows=None)
    report.rows_read[f"{kind}s"] = len(table.frame)
    if len(table.frame) == 0:
        report.problems.append(f"{table.name}: the table is empty (0 rows)")
        return None
    ids, bad = _id_values(table.frame[id_col])
    null = ids.isna().to_numpy() & ~bad
    keep = _apply_invalid(table, {f"a null or blank {id_col!r}": null, f"a non-integer number as {id_col!r}": bad},
                          [id_col], spec.drop_invalid, report)
    table, ids = table.take(keep), ids[keep].reset_index(drop=True)

    # exact duplicate rows: the same entity listed twice; one id with two different rows: a conflict
    exact = table.frame.assign(**{id_col: ids.astype(object)}).duplicated(keep="first").to_numpy()
    if exact.any():
        if spec.drop_duplicates:
            report.drop(f"duplicate rows in {table.name}", int(exact.sum()))
            table, ids = table.take(~exact), ids[~exact].reset_index(drop=True)
        else:
            report.problems.append(table.problem(exact, "repeating an earlier row exactly", [id_col],
                                                 "--drop-duplicates keeps the first of each"))
            return None
    conflict = ids.astype(object).duplicated(keep="first").to_numpy()
    if conflict.any():
        row = int(np.argmax(conflict))
        first = int(np.argmax((ids.astype(object) == ids.iloc[row]).to_numpy()))
        report.problems.append(
            f"{table.name}: {int(conflict.sum())} rows repeat an {id_col!r} with different values, "
            f"e.g. {table.example(row)} (first at {table.line(first)})"
        )
        return None
    features = {c: c for c in table.frame.columns if c != id_col}
    return _EntityTable(table, id_col, kind, features, ids)


def _rename_features(tables: dict[str, Optional[_EntityTable]], report: _Report) -> None:
    """Features named like a contract column, or like a feature of the other table, get a prefix."""
    present = [t for t in tables.values() if t is not None]
    names = {t.kind: set(t.features.values()) for t in present}
    for table in present:
        other = names.get("item" if table.kind == "user" else "user", set())
        for column, current in list(table.features.items()):
            if current in RESERVED_COLUMNS or current in other:
                renamed = f"{table.kind}_{current}"
                why = "a contract column's name" if current in RESERVED_COLUMNS else "a feature of the other table too"
                if renamed in table.features.values() or renamed in other:
                    report.problems.append(
                        f"{table.source.name}: feature column {current!r} is {why}, and {renamed!r} exists too; rename one"
                    )
                    continue
                table.features[column] = renamed
                report.warn(f"{table.source.name}: feature column {current!r} is {why}: imported as {renamed!r}")


# ------------------------------------------------------------------------------------------
# Values


def _id_values(values: "pd.Series") -> tuple["pd.Series", "np.ndarray"]:
    """An id column as a categorical of str (null where null or blank), and a mask of non-integral floats.

    CSV ids arrive as categories of text (kept exactly); parquet ints become their decimal text,
    parquet floats too when integral (a column of ints with nulls is stored as float).
    """
    import numpy as np
    import pandas as pd

    bad = np.zeros(len(values), dtype=bool)
    if isinstance(values.dtype, pd.CategoricalDtype):
        categorical = values
    elif pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_datetime64_any_dtype(values.dtype):
        raise InputFormatError(f"column {values.name!r}: ids cannot be {values.dtype} values")
    elif pd.api.types.is_float_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(numbers) & (np.mod(numbers, 1) != 0)
        integral = pd.Series(numbers).where(~bad & ~np.isnan(numbers))
        categorical = integral.astype("Int64").astype("category")
    else:
        categorical = values.astype("category")
    categorical = categorical.cat.remove_unused_categories()
    text = categorical.cat.categories.astype(str)
    categorical = categorical.cat.rename_categories(text) if not categorical.cat.categories.equals(text) else categorical
    blank = text.str.strip() == ""
    if blank.any():
        categorical = categorical.cat.remove_categories(text[blank])
    return categorical.reset_index(drop=True), bad


def _text_values(values: "pd.Series") -> "pd.Series":
    """A text column (event types) as a categorical of str, null where null or blank."""
    import pandas as pd

    categorical = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")
    categorical = categorical.cat.remove_unused_categories()
    text = categorical.cat.categories.astype(str)
    if not categorical.cat.categories.equals(text):
        categorical = categorical.cat.rename_categories(text)
    blank = text.str.strip() == ""
    if blank.any():
        categorical = categorical.cat.remove_categories(text[blank])
    return categorical.reset_index(drop=True)


def _labels(values: "pd.Series") -> tuple["pd.Series", "np.ndarray"]:
    """0/1, true/false (any case) or booleans -> int8; the mask of values that are none of these."""
    import numpy as np
    import pandas as pd

    if pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("int8").reset_index(drop=True), np.zeros(len(values), dtype=bool)
    categorical = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")
    mapped = [_LABELS.get(str(c).strip().lower(), -1) for c in categorical.cat.categories]
    codes = categorical.cat.codes.to_numpy()
    lookup = np.asarray(mapped + [-1], dtype=np.int64)  # code -1 (null) -> the last slot: invalid
    labels = lookup[codes]
    bad = labels < 0
    return pd.Series(np.where(bad, 0, labels).astype("int8")), bad


def _timestamps(values: "pd.Series", unit: str, table: SourceTable, column: str, report: _Report):
    """datetime64[ns] (UTC, naive; NaT where not parsed), mask of unparseable values, mask out of range.

    Datetimes are taken as they are (converted to UTC when they carry a zone); numbers (or numeric
    text) are unix epochs in ``unit`` (``auto``: by magnitude); other text must be ISO-8601.
    """
    import numpy as np
    import pandas as pd

    n = len(values)
    low = pd.Timestamp(MIN_TIMESTAMP).to_datetime64()
    high = (pd.Timestamp.now(tz="UTC").tz_localize(None) + pd.Timedelta(days=1)).to_datetime64()
    result = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    unparsed = np.zeros(n, dtype=bool)
    null = values.isna().to_numpy()
    formats = []

    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = values
        if getattr(values.dtype, "tz", None) is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        result = parsed.to_numpy(dtype="datetime64[ns]")
        formats.append("datetime")
    else:
        if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
            numbers, text = values.to_numpy(dtype=np.float64), None
        else:
            raw = values.astype(object)
            numbers = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
            text = raw.where(~null & np.isnan(numbers), None)
        numeric = ~np.isnan(numbers)
        if numeric.any():
            chosen = unit
            if unit == "auto":
                median = float(np.median(np.abs(numbers[numeric])))
                chosen = next(u for bound, u in _UNIT_BY_MAGNITUDE if median < bound)
                message = (f"{table.name}: column {column!r} holds unix timestamps in {_UNIT_NAMES[chosen]} "
                           f"(median {median:.3g}); pass --time-unit to say otherwise")
                (report.warn if chosen != "s" else log.info)(message)
            formats.append(f"unix {_UNIT_NAMES[chosen]}")
            report.detected["time_unit"] = chosen
            # compare as seconds first: an absurd value must not overflow the conversion
            seconds = numbers * _UNIT_SECONDS[chosen]
            limits = (pd.Timestamp(low).timestamp() - 86400, pd.Timestamp(high).timestamp() + 86400)
            with np.errstate(invalid="ignore"):
                convertible = numeric & (seconds > limits[0]) & (seconds < limits[1])
            if convertible.any():
                if pd.api.types.is_integer_dtype(values.dtype):  # exact integer arithmetic, and 10x faster
                    per_ns = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}[chosen]
                    ints = values.to_numpy()[convertible].astype(np.int64) * per_ns
                    result[convertible] = ints.view("datetime64[ns]")
                else:
                    result[convertible] = pd.to_datetime(numbers[convertible], unit=chosen).to_numpy(dtype="datetime64[ns]")
            far = numeric & ~convertible  # reported as out of range below
        else:
            far = np.zeros(n, dtype=bool)
        if text is not None and text.notna().any():
            has_text = text.notna().to_numpy()
            formats.append("ISO-8601 text")
            strings = text[has_text].astype(str).reset_index(drop=True)
            parsed = _parse_iso(strings)
            positions = np.flatnonzero(has_text)
            unparsed[positions[np.isnat(parsed)]] = True
            result[positions] = parsed
    parsed_ok = ~np.isnat(result)
    out_of_range = parsed_ok & ((result < low) | (result > high))
    if not pd.api.types.is_datetime64_any_dtype(values.dtype):
        out_of_range |= far
    result = np.where(out_of_range, np.datetime64("NaT"), result)
    report.detected["time_format"] = " + ".join(formats) or "none"
    return pd.Series(result), unparsed & ~null, out_of_range


def _parse_iso(strings: "pd.Series") -> "np.ndarray":
    """ISO-8601 text -> datetime64[ns] UTC naive (NaT for anything else).

    Values with an offset and values without one are parsed apart: pandas 2.3 parsing both in one
    call shifted the naive ones by the offset of an earlier value. pandas 2 is told each value is
    ISO-8601 (else it guesses ONE format from the first value); pandas 1.5 (the Merlin runtime)
    parses value by value and has no such option. Only text matching ``_ISO`` is parsed at all, so
    both runtimes accept the same values.
    """
    import numpy as np
    import pandas as pd

    out = np.full(len(strings), np.datetime64("NaT"), dtype="datetime64[ns]")
    iso = strings.str.match(_ISO).to_numpy()
    aware = iso & strings.str.contains(r"(?:Z|[+-]\d{2}(?::?\d{2})?)\s*$", regex=True).to_numpy()
    iso_format = {"format": "ISO8601"} if int(pd.__version__.split(".")[0]) >= 2 else {}
    for mask, utc in ((aware, True), (iso & ~aware, False)):
        if mask.any():
            parsed = pd.Series(pd.to_datetime(strings[mask], utc=utc, errors="coerce", **iso_format))
            if utc:
                parsed = parsed.dt.tz_localize(None)
            out[mask] = parsed.to_numpy(dtype="datetime64[ns]")
    return out


def _apply_invalid(table: SourceTable, invalid: dict[str, Any], columns: list[str], drop: bool, report: _Report):
    """Rows to keep: drop the invalid ones (counted by reason) or report each reason as a problem."""
    import numpy as np

    keep = np.ones(len(table.frame), dtype=bool)
    for reason, mask in invalid.items():
        mask = np.asarray(mask, dtype=bool) & keep  # a row is counted under its first reason only
        if not mask.any():
            continue
        if drop:
            report.drop(f"rows with {reason}", int(mask.sum()))
            keep &= ~mask
        else:
            report.problems.append(table.problem(mask, f"with {reason}", columns, "--drop-invalid drops such rows"))
    if drop and (~keep).any():
        report.warn(f"{table.name}: dropped {int((~keep).sum())} invalid rows (--drop-invalid)")
    return keep


def _deduplicate_events(out: "pd.DataFrame", source: SourceTable, roles: dict[str, str], drop: bool, report: _Report):
    """Exact duplicate events (every imported column equal): dropped with ``drop``, else a problem."""
    import numpy as np

    if len(out) == 0:
        return out
    duplicated = out.duplicated(keep="first").to_numpy()
    count = int(duplicated.sum())
    if count == 0:
        return out
    if drop:
        report.drop("duplicate events", count)
        report.warn(f"{source.name}: dropped {count} duplicate events (--drop-duplicates)")
        return out[~duplicated].reset_index(drop=True)
    row = int(np.argmax(duplicated))
    same = np.ones(len(out), dtype=bool)
    for column in out.columns:
        same &= (out[column].astype(object) == out[column].astype(object).iloc[row]).to_numpy()
    first = int(np.argmax(same))
    report.problems.append(
        f"{source.name}: {count} duplicate events (same {', '.join(roles.values())}), e.g. "
        f"{source.example(row, list(roles.values()))} repeats {source.line(first)}; "
        "--drop-duplicates keeps the first of each"
    )
    return out


# ------------------------------------------------------------------------------------------
# Id types


def _sorted_unique(ids: "pd.Series") -> "pd.Series":
    import pandas as pd

    values = ids.cat.remove_unused_categories()
    categories = values.cat.categories
    if _all_canonical(categories):
        order = sorted(categories, key=int)
    else:
        order = sorted(categories)
    return pd.Series(pd.Categorical(order, categories=categories))


def _all_canonical(categories: "pd.Index") -> bool:
    return bool(len(categories)) and bool(categories.astype(str).str.fullmatch(_CANONICAL_INT).all())


def _decide_id_type(*columns: "pd.Series") -> str:
    """``int64`` when every id of the entity (in all its tables) is a canonical integer, else ``string``."""
    for column in columns:
        categories = column.cat.remove_unused_categories().cat.categories
        if len(categories) and not _all_canonical(categories):
            return "string"
    return "int64"


def _as_int64(ids: "pd.Series") -> "pd.Series":
    import numpy as np
    import pandas as pd

    categories = ids.cat.categories.astype(np.int64)
    codes = ids.cat.codes.to_numpy()
    if (codes < 0).any():  # pragma: no cover - invalid rows were dropped or refused before
        raise ValueError("null ids left after validation")
    return pd.Series(np.asarray(categories)[codes], dtype=np.int64)


__all__ = ["ImportSpec", "import_tables", "read_tables", "TIME_UNITS"]
