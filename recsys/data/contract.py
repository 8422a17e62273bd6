"""The input contract: which tables a user brings, their columns, and how to read them.

A data folder holds three tables (``interactions``, ``users``, ``items``), each stored as
``NAME.parquet``, ``NAME.csv`` or a folder ``NAME/`` of parquet/CSV parts. See docs/layouts.md, section 1.

This module only describes and reads tables; :mod:`recsys.data.validation` checks them.
pandas and pyarrow are imported inside functions so that importing the contract stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from recsys.data import ids
from recsys.errors import RecsysError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd


class DataValidationError(RecsysError):
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
    optional={"event_type": TEXT, "label": LABEL},
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

    ``NAME.parquet`` wins over ``NAME.csv``, which wins over a folder ``NAME/`` of parts
    (``*.parquet`` and ``*.csv``, sorted by name; hidden files such as ``_SUCCESS`` are ignored).
    """
    folder = Path(folder)
    for suffix in _FORMATS:
        single = folder / f"{name}{suffix}"
        if single.is_file():
            return [single]
    parts_dir = folder / name
    if parts_dir.is_dir():
        return sorted(
            p
            for p in parts_dir.iterdir()
            if p.is_file() and p.suffix in _FORMATS and not p.name.startswith((".", "_"))
        )
    return []


def read_file(path: Path) -> "pd.DataFrame":
    """Read one parquet or CSV file into pandas, without interpreting any column yet."""
    import pandas as pd

    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pandas()
    # CSV: id columns as text (so "001" stays "001": recsys.data.ids decides whether a column is
    # integers); pandas infers the other columns. Validation decides what is a valid id / timestamp.
    return pd.read_csv(path, low_memory=False, dtype={column: str for column in ID_COLUMNS})


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
    return f"{name}: missing table: expected {name}.parquet, {name}.csv or a folder {name}/ in {folder}"


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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
