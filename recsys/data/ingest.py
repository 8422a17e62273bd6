"""Turn a validated input folder into an immutable data version (docs/layouts.md, section 2).

    <data_root>/<data_version>/interactions.parquet, users.parquet, items.parquet, manifest.json

``data_version`` is the first 12 hex digits of a sha256 over the normalized tables' content
(column names, dtypes and values; not file bytes, so the same data as CSV or parquet, or written
by another pyarrow version, gives the same version). Ingesting the same data twice is a no-op.

Users first seen in live events (:attr:`InputTables.new_users`) are added to the users table here,
with empty features (:func:`with_new_users`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from recsys import layout
from recsys.data.contract import feature_columns, nullable_features
from recsys.data.validation import InputTables, validate_input
from recsys.data.versioning import (
    MANIFEST,
    Version,
    atomic_directory,
    content_hash,
    read_manifest,
    sha256_file,
    utc_now_iso,
    write_json_atomic,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

TABLE_ORDER = layout.DATA_TABLES


@dataclass(frozen=True)
class DataVersion(Version):
    """A data version folder; ``created`` is False when ingest found it already there."""

    created: bool = True

    def table_path(self, name: str) -> Path:
        return layout.data_table(self.path, name)

    @property
    def has_labels(self) -> bool:
        return bool(self.manifest.get("has_labels"))


def ingest(
    input_folder: Path, data_root: Optional[Path] = None, negative_event_types: Optional[Iterable[str]] = None
) -> DataVersion:
    """Validate ``input_folder`` and write its data version under ``data_root`` atomically.

    ``data_root`` defaults to the settings' ``data_root``; ``negative_event_types`` (the live event
    types labelled 0) to the settings' (see :func:`~recsys.data.validation.validate_input`). Raises
    ``DataValidationError`` (and writes nothing) when the input breaks the contract.
    """
    if data_root is None:
        from recsys.settings import get_settings

        data_root = get_settings().data_root
    input_folder, data_root = Path(input_folder), Path(data_root)
    started = time.monotonic()
    log.info("validating %s", input_folder)
    tables = validate_input(input_folder, negative_event_types)
    tables = replace(tables, users=with_new_users(tables.users, tables.new_users))

    version = data_version_of(tables)
    target = layout.data_dir(data_root, version)
    if layout.is_complete(target):
        log.info("data version %s already exists at %s: nothing to do", version, target)
        return DataVersion(version, target, read_manifest(target), created=False)

    manifest = build_manifest(tables, version)
    with atomic_directory(target) as tmp:
        for name in TABLE_ORDER:
            frame = tables.tables()[name]
            log.info("writing %s.parquet (%d rows)", name, len(frame))
            write_parquet(frame, layout.data_table(tmp, name))
        write_json_atomic(tmp / MANIFEST, manifest)
    log.info("data version %s written to %s in %.1f s", version, target, time.monotonic() - started)
    # another writer may have won the rename with the same content: read what is on disk
    return DataVersion(version, target, read_manifest(target), created=True)


def with_new_users(users: "pd.DataFrame", new_users: list[Any]) -> "pd.DataFrame":
    """``users`` followed by one row per new user (first seen live), every feature empty (null).

    A feature's kind is its dtype (:func:`recsys.data.contract.feature_columns`) and must not change:
    text columns take None, float columns NaN, and integer and boolean columns (categorical) become
    pandas' nullable ``Int64``/``boolean`` (:func:`recsys.data.contract.nullable_features`), which
    the ETL's ``Categorify`` encodes like any categorical null. Without new users the table is
    returned as it is (its data version unchanged).
    """
    import pandas as pd

    if not len(new_users):
        return users
    users = nullable_features(users, "user_id")
    added = {
        column: pd.Series(list(new_users) if column == "user_id" else [None] * len(new_users), dtype=users[column].dtype)
        for column in users.columns
    }
    return pd.concat([users, pd.DataFrame(added)], ignore_index=True)


def data_version_of(tables: InputTables) -> str:
    """The content hash of the normalized tables (12 hex digits)."""
    parts: list[Any] = []
    for name in TABLE_ORDER:
        frame = tables.tables()[name]
        parts.append({"table": name, "columns": [[c, str(frame[c].dtype)] for c in frame.columns]})
        parts.append(_row_hashes(frame).tobytes())
    return content_hash(*parts)


def _row_hashes(frame: "pd.DataFrame") -> "np.ndarray":
    """``pandas.util.hash_pandas_object(frame, index=False)``, the same in both runtimes.

    It hashes values, not memory layout, and numpy columns hash alike in pandas 1.5 and 2; nullable
    (masked) columns (``Int64``, ``boolean``: the empty features of new users) do not, so those are
    hashed as pandas 2 does (the value hashes, then pandas.NA's hash where null) and the column
    hashes combined as pandas combines them (CPython's tuple hash).
    """
    import numpy as np
    import pandas as pd

    masked = [c for c in frame.columns if _is_masked(frame[c].dtype)]
    if not masked:
        return pd.util.hash_pandas_object(frame, index=False).to_numpy()
    out = np.zeros(len(frame), dtype=np.uint64) + np.uint64(0x345678)
    mult = np.uint64(1000003)
    count = len(frame.columns)
    with np.errstate(over="ignore"):
        for i, column in enumerate(frame.columns):
            out ^= _column_hashes(frame[column])
            out *= mult
            mult += np.uint64(82520 + 2 * (count - i))
        out += np.uint64(97531)
    return out


def _is_masked(dtype: Any) -> bool:
    import numpy as np
    import pandas as pd

    return (
        isinstance(dtype, pd.api.extensions.ExtensionDtype)
        and isinstance(getattr(dtype, "numpy_dtype", None), np.dtype)
        and dtype.kind in "biuf"
    )


def _column_hashes(series: "pd.Series") -> "np.ndarray":
    import numpy as np
    import pandas as pd

    if not _is_masked(series.dtype):
        return pd.util.hash_pandas_object(series, index=False).to_numpy()
    null = series.isna().to_numpy()
    values = series.to_numpy(dtype=series.dtype.numpy_dtype, na_value=series.dtype.numpy_dtype.type(0))
    hashes = pd.util.hash_array(values)
    hashes[null] = np.uint64(hash(pd.NA))
    return hashes


def build_manifest(tables: InputTables, version: str) -> dict[str, Any]:
    """The manifest of a data version (see docs/layouts.md, section 2)."""
    frames = tables.tables()
    timestamps = tables.interactions["timestamp"]
    features = {}
    for name, id_col in (("users", "user_id"), ("items", "item_id")):
        split = feature_columns(frames[name], id_col)
        categorical, continuous = split.categorical, split.continuous
        features[name] = {"categorical": categorical, "continuous": continuous}
    input_hashes = {}
    for paths in tables.files.values():
        for path in paths:
            input_hashes[path.relative_to(tables.folder).as_posix()] = sha256_file(path)
    return {
        "data_version": version,
        "created_at": utc_now_iso(),
        "source": str(tables.folder.resolve()),
        "rows": {name: int(len(frames[name])) for name in TABLE_ORDER},
        "columns": {name: {c: str(frames[name][c].dtype) for c in frames[name].columns} for name in TABLE_ORDER},
        "features": features,
        "has_labels": tables.has_labels,
        "ids": tables.id_kinds.to_dict(),
        "input_hashes": input_hashes,
        "time_range": {"min": timestamps.min().isoformat(), "max": timestamps.max().isoformat()},
        "live_events": tables.live.to_dict(),
        "warnings": tables.warnings,
    }


def write_parquet(frame: "pd.DataFrame", path: Path) -> None:
    """Write a DataFrame as one parquet file without the pandas index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def load_data_version(path: Path) -> dict[str, "pd.DataFrame"]:
    """Read the three tables of a data version folder (for later hops and tests)."""
    import pyarrow.parquet as pq

    path = Path(path)
    read_manifest(path)  # refuse incomplete folders
    return {name: pq.read_table(layout.data_table(path, name)).to_pandas() for name in TABLE_ORDER}
