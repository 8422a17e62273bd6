"""What every importer shares: its error type, progress lines, and ONE writer of input folders.

An importer turns some source (MovieLens files, a user's own event log, the synthetic generator)
into the three contract tables (docs/layouts.md, section 1) and hands them to
:func:`write_input_folder`, which

* refuses a non-empty output folder unless ``force`` (checked again by :func:`check_output_folder`
  *before* an importer spends minutes reading, so a typo fails at once);
* writes ``interactions.parquet``, ``users.parquet``, ``items.parquet`` (+ an optional JSON file
  saying where the data came from, ``import.json``) into a temporary sibling folder, and renames it
  into place only once complete: a reader sees the old folder or the new one, never half of one;
* stores text as plain parquet strings (not dictionaries), so every reader gets ``str`` columns.

Errors about the source are :class:`InputFormatError`: one line per problem, each naming the file,
the line (CSV, header = line 1) or row (parquet, 0-based) and the value, like validation's messages.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

from recsys.errors import InputError, RecsysError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

log = logging.getLogger(__name__)

TABLE_NAMES = ("interactions", "users", "items")
METADATA_FILE = "import.json"
"""Written beside the tables: which importer, from which files, what was detected and dropped."""


class InputFormatError(InputError):
    """A source file of an import is missing or malformed. ``problems``: one line each."""

    def __init__(self, problems: Union[str, Iterable[str]]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = "\n".join([f"{len(self.problems)} problems:"] + [f"  - {p}" for p in self.problems])
        super().__init__(message)


class OutputExistsError(RecsysError):
    """The output folder of an import already holds something."""


@dataclass
class ImportResult:
    """What an import wrote: rows per table, the folder, and its ``import.json`` content."""

    out_dir: Path
    rows: dict[str, int]
    metadata: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for people: ``wrote DIR: interactions N rows, users N rows, items N rows``."""
        return f"wrote {self.out_dir}: " + ", ".join(f"{name} {n} rows" for name, n in self.rows.items())


def check_output_folder(out_dir: Path, force: bool = False) -> None:
    """Refuse an output folder that exists and is not empty (unless ``force``), or that is a file."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a folder")
    if not force and out_dir.is_dir() and any(out_dir.iterdir()):
        raise OutputExistsError(f"{out_dir} already exists and is not empty (use --force to replace it)")


def write_input_folder(
    out_dir: Path,
    tables: dict[str, "pd.DataFrame"],
    *,
    force: bool = False,
    metadata: Optional[dict[str, Any]] = None,
    metadata_file: str = METADATA_FILE,
) -> dict[str, int]:
    """Write the three tables as parquet into ``out_dir``, atomically; returns rows per table.

    ``force`` replaces an existing folder (its old content is removed only once the new one is
    complete). ``metadata`` (JSON-able) is written as ``metadata_file`` beside the tables.
    """
    from recsys.data.versioning import atomic_directory, write_json_atomic

    out_dir = Path(out_dir)
    missing = [name for name in TABLE_NAMES if name not in tables]
    if missing or set(tables) - set(TABLE_NAMES):
        raise ValueError(f"an input folder holds exactly {TABLE_NAMES}; got {sorted(tables)}")
    check_output_folder(out_dir, force)
    started = time.monotonic()
    # A uniquely named staging folder: atomic_directory renames it into place only when the block
    # succeeds (and removes it on any error); then one more rename swaps it in for the old folder.
    staging = out_dir.parent / f".{out_dir.name}.writing-{uuid.uuid4().hex[:8]}"
    with atomic_directory(staging) as tmp:
        for name in TABLE_NAMES:
            write_table(tables[name], tmp / f"{name}.parquet")
        if metadata is not None:
            write_json_atomic(tmp / metadata_file, metadata)
    _swap_into_place(staging, out_dir)
    rows = {name: int(len(tables[name])) for name in TABLE_NAMES}
    log.info("wrote %s in %.1f s: %s", out_dir, time.monotonic() - started, rows)
    return rows


def write_table(frame: "pd.DataFrame", path: Path) -> None:
    """One DataFrame as one parquet file: no pandas index, text as plain strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    for index, column in enumerate(table.schema):
        if pa.types.is_dictionary(column.type):  # pandas categoricals: readers should get str columns
            table = table.set_column(index, column.name, table.column(index).cast(column.type.value_type))
    pq.write_table(table, path)


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the complete ``staging`` folder to ``out_dir``; an old ``out_dir`` goes only afterwards."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)  # put the previous content back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class Progress:
    """Progress of reading one source, logged once per chunk: rows so far and the rate.

    Small sources are read in one chunk and get one line; a 10M-row file read in chunks of 1M rows
    gets ten, so a long import shows it is alive and how fast it goes.
    """

    def __init__(self, label: str):
        self.label = label
        self.rows = 0
        self.chunks = 0
        self.started = time.monotonic()

    def add(self, rows: int) -> None:
        self.rows += int(rows)
        self.chunks += 1
        elapsed = max(time.monotonic() - self.started, 1e-9)
        log.info("%s: %s rows read (%s rows/s)", self.label, f"{self.rows:,}", f"{self.rows / elapsed:,.0f}")

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def show(value: Any) -> str:
    """A value as error messages show it: text quoted, nulls as null, integral floats plain."""
    try:
        import pandas as pd

        if value is None or (not isinstance(value, (str, bytes)) and pd.isna(value)):
            return "null"
    except (TypeError, ValueError):
        pass
    if isinstance(value, str):
        return repr(value)
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (parsers' messages span several)."""
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Reading a source file (CSV or parquet, or a folder of parts) with every row's location kept

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip", ".tsv", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
CHUNK_ROWS = 1_000_000

# What counts as null in text columns (pandas' own list, e.g. '', 'NA', 'null', 'NaN'), and in id
# columns: there 'NA' stays a value, since real codes are 'NA' (Namibia, "not applicable", an SKU).
_PANDAS_NULLS = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip
ID_NULLS = tuple(token for token in _PANDAS_NULLS if token != "NA")


def source_kind(path: Path) -> str:
    """``csv`` or ``parquet`` by the file name (compressed CSV included); raises for anything else."""
    name = Path(path).name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise InputFormatError(
        f"{path}: unknown file type; expected CSV ({', '.join(CSV_SUFFIXES)}) or parquet ({', '.join(PARQUET_SUFFIXES)})"
    )


def source_files(path: Path) -> list[Path]:
    """The files of a source: the file itself, or a folder's CSV/parquet parts sorted by name
    (hidden files and ``_SUCCESS``-style markers ignored)."""
    path = Path(path)
    if path.is_file():
        source_kind(path)
        return [path]
    if path.is_dir():
        parts = sorted(
            p for p in path.iterdir()
            if p.is_file() and not p.name.startswith((".", "_")) and p.name.lower().endswith(CSV_SUFFIXES + PARQUET_SUFFIXES)
        )
        if not parts:
            raise InputFormatError(f"{path}: folder holds no CSV or parquet files")
        return parts
    raise InputFormatError(f"{path}: file not found")


def read_header(path: Path) -> list[str]:
    """Column names of a source (the first part's, for a folder), without reading its rows."""
    first = source_files(path)[0]
    try:
        if source_kind(first) == "parquet":
            import pyarrow.parquet as pq

            return [str(name) for name in pq.ParquetFile(first).schema_arrow.names]
        import pandas as pd

        return [str(c) for c in pd.read_csv(first, nrows=0, sep=_separator(first)).columns]
    except InputFormatError:
        raise
    except UnicodeDecodeError as exc:
        raise InputFormatError(f"{first.name}: not utf-8 text ({one_line(exc)})") from None
    except Exception as exc:  # any parser error: name the file
        raise InputFormatError(f"{first.name}: cannot read the header: {one_line(exc)}") from None


@dataclass
class SourceTable:
    """Rows read from a source, each with the file and line (CSV) / row (parquet) it came from."""

    files: list[Path]
    frame: "pd.DataFrame"
    """index 0..n-1; blank CSV lines are left out."""
    file_index: Any
    """numpy int32, per row: index into ``files``."""
    position: Any
    """numpy int64, per row: line number in a CSV file (header = line 1), row number in a parquet file (0-based)."""

    @property
    def name(self) -> str:
        """How messages name the whole source: its file, or its folder of parts."""
        return self.files[0].name if len(self.files) == 1 else f"{self.files[0].parent.name}/"

    def locate(self, row: int) -> str:
        """``events.csv line 7`` / ``part-0.parquet row 6`` of a row of ``frame``."""
        path = self.files[int(self.file_index[row])]
        unit = "line" if source_kind(path) == "csv" else "row"
        return f"{path.name} {unit} {int(self.position[row])}"

    def line(self, row: int) -> str:
        """``line 7`` (``part-0.csv line 7`` when the source has several files): inside a message about the source."""
        return self.locate(row) if len(self.files) > 1 else self.locate(row).split(" ", 1)[1]

    def example(self, row: int, columns: Optional[Iterable[str]] = None) -> str:
        """``line 7: customer=null, sku='85123A'``: where a row is and what it holds."""
        columns = list(self.frame.columns if columns is None else columns)
        values = ", ".join(f"{c}={show(self.frame[c].iloc[row])}" for c in columns)
        return f"{self.line(row)}: {values}"

    def problem(self, mask: Any, what: str, columns: Optional[Iterable[str]] = None, hint: str = "") -> Optional[str]:
        """One message for every row in ``mask`` (the first as the example), or None when there is none:
        ``events.csv: 3 rows with an empty 'customer', e.g. line 7: customer=null, sku='85123A'``."""
        import numpy as np

        mask = np.asarray(mask, dtype=bool)
        count = int(mask.sum())
        if count == 0:
            return None
        row = int(np.argmax(mask))
        rows = "row" if count == 1 else "rows"
        return f"{self.name}: {count} {rows} {what}, e.g. {self.example(row, columns)}" + (f"; {hint}" if hint else "")

    def take(self, keep: Any) -> "SourceTable":
        """The rows where ``keep`` is true (locations kept)."""
        import numpy as np

        keep = np.asarray(keep, dtype=bool)
        return SourceTable(self.files, self.frame[keep].reset_index(drop=True), self.file_index[keep], self.position[keep])


def read_source(
    path: Path,
    columns: Optional[list[str]] = None,
    *,
    text: Iterable[str] = (),
    categorical: Iterable[str] = (),
    nulls: Optional[dict[str, Iterable[str]]] = None,
    label: Optional[str] = None,
    chunk_rows: Optional[int] = CHUNK_ROWS,
    encoding: str = "utf-8",
) -> SourceTable:
    """Read ``columns`` (default: all) of a CSV/parquet file or folder of parts, in chunks, with progress.

    CSV: ``text`` columns are read as str exactly as written (``001`` stays ``001``), ``categorical``
    ones as pandas categories of str (the same, but one copy of each distinct value: ids and event
    types of a large log), the rest inferred by pandas. Only the tokens in ``nulls[column]`` (default:
    pandas' list, e.g. '', 'NA', 'null') are null. Blank lines are skipped but counted, so every
    row knows its true line. Parquet keeps its types; ``categorical`` string columns become categories.
    Quoting (commas and quotes inside fields) is pandas' CSV parser's. ``chunk_rows`` None: one chunk
    per file (then pandas infers a column's type over the whole file, not chunk by chunk).
    """
    import numpy as np

    files = source_files(path)
    text, categorical = set(text), set(categorical)
    progress = Progress(label or (files[0].name if len(files) == 1 else f"{Path(path).name}/"))
    frames, file_index, positions = [], [], []
    for index, file in enumerate(files):
        chunks = _csv_chunks if source_kind(file) == "csv" else _parquet_chunks
        for frame, position in chunks(file, columns, text, categorical, nulls or {}, chunk_rows, encoding):
            frames.append(frame)
            positions.append(position)
            file_index.append(np.full(len(frame), index, dtype=np.int32))
            progress.add(len(frame))
    if not frames:
        import pandas as pd

        frame = pd.DataFrame({c: [] for c in (columns or read_header(path))})
    else:
        frame = concat_frames(frames)
    return SourceTable(files, frame, np.concatenate(file_index) if file_index else np.zeros(0, np.int32),
                       np.concatenate(positions) if positions else np.zeros(0, np.int64))


def _separator(path: Path) -> str:
    return "\t" if ".tsv" in path.name.lower() else ","


def _csv_chunks(path, columns, text, categorical, nulls, chunk_rows, encoding):
    import numpy as np
    import pandas as pd

    names = columns or read_header(path)
    # categorical columns are read as text, then factorized per chunk: pandas' own "category" dtype
    # sorts each chunk's categories, 2-3x slower on a large log
    dtype = {c: str for c in names if c in text or c in categorical}
    # keep_default_na=False + a per-column list: exactly these tokens are null, column by column
    na_values = {c: list(nulls.get(c, ID_NULLS if c in categorical else _PANDAS_NULLS)) for c in names}
    try:
        reader = pd.read_csv(
            path, usecols=columns, dtype=dtype, keep_default_na=False, na_values=na_values, sep=_separator(path),
            skip_blank_lines=False, chunksize=chunk_rows, encoding=encoding, low_memory=False,
        )
        read = 0
        for chunk in ([reader] if chunk_rows is None else reader):
            line = np.arange(read, read + len(chunk), dtype=np.int64) + 2  # the header is line 1
            read += len(chunk)
            blank = np.ones(len(chunk), dtype=bool)
            for column in chunk.columns:
                values = chunk[column]
                blank &= (values.isna() | (values.astype(object) == "")).to_numpy()
            if blank.any():
                chunk, line = chunk[~blank], line[~blank]
            chunk = chunk.reset_index(drop=True)
            for column in categorical & set(chunk.columns):
                chunk[column] = _to_categorical(chunk[column])
            yield chunk, line
    except UnicodeDecodeError as exc:
        raise InputFormatError(f"{path.name}: not {encoding} text ({one_line(exc)})") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise InputFormatError(f"{path.name}: cannot parse the CSV: {one_line(exc)}") from None


def _parquet_chunks(path, columns, text, categorical, nulls, chunk_rows, encoding):
    import numpy as np
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
        read = 0
        batches = [handle.read(columns=columns)] if chunk_rows is None else handle.iter_batches(batch_size=chunk_rows, columns=columns)
        for batch in batches:
            frame = batch.to_pandas()
            for column in categorical & set(frame.columns):
                if frame[column].dtype == object:
                    frame[column] = _to_categorical(frame[column])
            yield frame, np.arange(read, read + len(frame), dtype=np.int64)
            read += len(frame)
    except InputFormatError:
        raise
    except Exception as exc:  # pyarrow's errors: name the file
        raise InputFormatError(f"{path.name}: cannot read the parquet file: {one_line(exc)}") from None


def _to_categorical(values: "pd.Series") -> "pd.Series":
    """Text -> a categorical in order of first appearance (no sort), nulls kept as nulls."""
    import pandas as pd

    codes, uniques = pd.factorize(values, sort=False)
    return pd.Series(pd.Categorical.from_codes(codes, categories=pd.Index(uniques, dtype=object)), index=values.index)


def concat_frames(frames: list["pd.DataFrame"]) -> "pd.DataFrame":
    """Concatenate chunks; categorical columns stay categorical (their categories are united)."""
    import pandas as pd
    from pandas.api.types import union_categoricals

    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    out = {}
    for column in dict.fromkeys(c for f in frames for c in f.columns):  # parts may differ in columns
        parts = [f[column] if column in f.columns else pd.Series([None] * len(f), dtype=object) for f in frames]
        if all(isinstance(p.dtype, pd.CategoricalDtype) for p in parts):
            out[column] = pd.Series(union_categoricals([p.array for p in parts], sort_categories=False))
        else:
            out[column] = pd.concat([p.astype(object) if isinstance(p.dtype, pd.CategoricalDtype) else p for p in parts],
                                    ignore_index=True)
    return pd.DataFrame(out)
