"""The two windows a drift check compares, as raw feature rows.

* **reference**: what the current ``champion`` learned from: every interaction of its data version (its
  MLflow run's tags name the data and feature versions; published models are refitted on training and
  validation rows together, so the whole version, ``[first, last]`` in the feature version's manifest);
* **current**: the last ``drift_window_days`` days of the newest data version.

A row of a window is one interaction joined with its user's and item's raw feature columns (before
the ETL: ``age_bucket``, ``device``, ``category``, ``price_band``, ``item_age_days``, ...), so the
comparison weighs features as the models see them: by how often they occur in interactions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from recsys import layout
from recsys.data.contract import FeatureColumns
from recsys.data.versioning import MANIFEST
from recsys.errors import InputError
from recsys.layout import FeatureVersion, data_table, is_complete
from recsys.settings import Settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

    from recsys.tracking.champions import Champion

log = logging.getLogger(__name__)


class DriftDataError(InputError):
    """A window cannot be compared: no rows, missing columns, or a missing version."""


@dataclass
class Window:
    """Rows of one window (``frame``: one column per feature) and where they came from."""

    name: str
    data_version: str
    data_dir: Path
    start: str
    end: str
    rows: int
    """Rows in the window before sampling."""
    frame: "pd.DataFrame" = field(repr=False)

    def describe(self) -> dict:
        return {
            "data_version": self.data_version,
            "start": self.start,
            "end": self.end,
            "rows": self.rows,
            "rows_compared": int(len(self.frame)),
        }


def feature_columns_of(data_dir: Path) -> FeatureColumns:
    """The user and item feature columns of a data version, from its manifest."""
    from recsys.data.versioning import read_manifest

    features = read_manifest(data_dir).get("features", {})
    categorical, continuous = [], []
    for table in ("users", "items"):
        categorical += list(features.get(table, {}).get("categorical", []))
        continuous += list(features.get(table, {}).get("continuous", []))
    if not categorical and not continuous:
        raise DriftDataError(f"{data_dir / MANIFEST}: the data version has no user or item feature columns")
    return FeatureColumns(categorical, continuous)


def reference_window(champion: "Champion", columns: FeatureColumns, settings: Settings) -> Window:
    """What the champion learned from: the interactions of its data version, ``[first, last]``."""
    import pandas as pd

    from recsys.data.versioning import VersionNotFoundError, read_manifest

    try:
        split = read_manifest(FeatureVersion.of(settings, champion.feature_version).path)["split"]
    except VersionNotFoundError as exc:
        raise DriftDataError(f"champion run {champion.run_id}: {exc}") from None
    # Feature versions written before the refit existed name only their training window.
    start = pd.Timestamp(split.get("first", split["train_start"]))
    end = pd.Timestamp(split.get("last", split["train_end"]))
    return _window("reference", layout.data_dir(settings, champion.data_version), columns, start, end, end_inclusive="last" in split, settings=settings)


def current_window(data_dir: Path, columns: FeatureColumns, settings: Settings) -> Window:
    """The last ``drift_window_days`` days (up to the newest interaction) of a data version."""
    import pyarrow.parquet as pq

    path = data_table(data_dir, "interactions")
    if not path.exists():
        raise DriftDataError(f"{path}: missing (is {data_dir} a complete data version?)")
    newest = pq.read_table(path, columns=["timestamp"]).column("timestamp").to_pandas().max()
    if newest is None or newest != newest:  # None or NaT: no interactions at all
        raise DriftDataError(f"{path}: column 'timestamp' has no values: the current window is empty")
    import pandas as pd

    end = pd.Timestamp(newest)
    start = end - timedelta(days=settings.drift_window_days)
    return _window("current", data_dir, columns, start, end, end_inclusive=True, settings=settings, strict_start=True)


def _window(
    name: str,
    data_dir: Path,
    columns: FeatureColumns,
    start: "pd.Timestamp",
    end: "pd.Timestamp",
    *,
    end_inclusive: bool,
    settings: Settings,
    strict_start: bool = False,
) -> Window:
    """Interactions of ``data_dir`` within the time range, joined with user and item features, sampled."""
    import pandas as pd
    import pyarrow.parquet as pq

    from recsys.data.versioning import read_manifest

    if not is_complete(data_dir):
        raise DriftDataError(f"{data_dir}: data version missing (needed for the {name} window)")
    data_version = str(read_manifest(data_dir).get("data_version", data_dir.name))
    lower = (">" if strict_start else ">=", start.to_datetime64())
    upper = ("<=" if end_inclusive else "<", end.to_datetime64())
    interactions = pq.read_table(
        data_table(data_dir, "interactions"),
        columns=["user_id", "item_id", "timestamp"],
        filters=[("timestamp", lower[0], lower[1]), ("timestamp", upper[0], upper[1])],
    ).to_pandas()
    if interactions.empty:
        raise DriftDataError(
            f"{data_table(data_dir, 'interactions')}: no interactions in the {name} window "
            f"(column timestamp, {start} .. {end}): nothing to compare"
        )
    rows = len(interactions)
    if settings.drift_max_rows and rows > settings.drift_max_rows:
        # A seeded sample: the same window gives the same rows, so re-running a check gives the same scores.
        interactions = interactions.sample(n=settings.drift_max_rows, random_state=settings.seed)
    frame = interactions
    for table, key in (("users", "user_id"), ("items", "item_id")):
        wanted = [c for c in columns.all if c in _parquet_columns(data_table(data_dir, table))]
        entity = pd.read_parquet(data_table(data_dir, table), columns=[key, *wanted])
        frame = frame.merge(entity, on=key, how="left")
    missing = [c for c in columns.all if c not in frame.columns]
    if missing:
        present = sorted(set(_parquet_columns(data_table(data_dir, "users"))) | set(_parquet_columns(data_table(data_dir, "items"))))
        raise DriftDataError(
            f"{data_dir}/users.parquet, items.parquet: the {name} window lacks feature column(s) {missing} "
            f"that the champion was trained on (present: {present})"
        )
    log.info("%s window: %d interactions of data version %s (%s .. %s), %d compared",
             name, rows, data_version, start, end, len(frame))
    return Window(name, data_version, data_dir, _iso(start), _iso(end), rows, frame[columns.all].reset_index(drop=True))


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def _iso(value: "pd.Timestamp") -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_comparable(reference: "pd.DataFrame", current: "pd.DataFrame", columns: FeatureColumns, where: str = "current") -> None:
    """Refuse frames a check cannot compare, naming the column: no rows, missing or all-null columns."""
    if len(current) == 0:
        raise DriftDataError(f"{where}: the current window has no rows: nothing to compare")
    if len(reference) == 0:
        raise DriftDataError("reference: the reference window has no rows: nothing to compare")
    missing = [c for c in columns.all if c not in current.columns]
    if missing:
        raise DriftDataError(
            f"{where}: missing feature column(s) {missing}; present: {sorted(map(str, current.columns))}"
        )
    empty = [c for c in columns.all if current[c].isna().all()]
    if empty:
        example = current[empty[0]].head(1).tolist()
        raise DriftDataError(f"{where}: column(s) {empty} hold only nulls in the current window, e.g. {empty[0]}={example}")
