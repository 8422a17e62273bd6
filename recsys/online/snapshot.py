"""What one online version holds, built from a feature version and its data version (no Redis here).

A :class:`Snapshot` is the content of the online store for one feature version, already packed:

Raw ids are of the feature version's id kinds (:mod:`recsys.data.ids`: int64 arrays, or object
arrays of str), recorded in the snapshot (``id_kinds``) and so in the online version's metadata.

* per user (by RAW user id): the transformed user features (the feature version's ``users/`` row,
  ``user_id`` encoded first, same column order), and the RAW ids of the items the user has seen
  (every interaction row of the data version, shown-and-ignored impressions included: the same rule
  the offline evaluation uses);
* per item (by RAW item id): the transformed item features (``items/`` row) and the raw display
  attributes (the data version's ``items.parquet`` columns, as compact JSON);
* the popularity list: RAW item ids, most engaged first (cold start);
* per entity a 64-bit content hash (features + seen / display), so an incremental refresh can tell
  which entities changed without reading them back.

Packing: each row is the columns' values back to back as little-endian 4-byte numbers, ``int32``
for categorical (encoded) columns and ``float32`` for continuous ones, in the column order recorded
in the version's metadata. Decoding a hundred rows is one ``numpy.frombuffer`` call. Readers widen
categorical columns to ``int64`` (the models' input dtype, docs/layouts.md section 3).

Works with both runtimes' pandas/numpy/pyarrow; imports them inside functions.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from recsys.data import ids
from recsys.data.versioning import read_manifest
from recsys.errors import RecsysError
from recsys.layout import FeatureVersion, data_table

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

# Reader-side fill values for an entity the version does not hold: the ETL's out-of-vocabulary
# code for categorical columns, and 0 (= the training mean after normalization) for continuous ones.
OOV_CODE = 2
CONTINUOUS_FILL = 0.0


class SnapshotError(RecsysError):
    """A feature or data version cannot be turned into an online version."""


@dataclass(frozen=True)
class RowLayout:
    """Column names and packed dtypes (``"int32"`` or ``"float32"``) of one entity kind."""

    columns: tuple[str, ...]
    dtypes: tuple[str, ...]

    @property
    def packed_dtype(self) -> "np.dtype":
        import numpy as np

        return np.dtype([(c, "<i4" if d == "int32" else "<f4") for c, d in zip(self.columns, self.dtypes)])

    @property
    def row_bytes(self) -> int:
        return 4 * len(self.columns)

    def to_dict(self) -> dict:
        return {"columns": list(self.columns), "dtypes": list(self.dtypes)}

    @classmethod
    def from_dict(cls, raw: dict) -> "RowLayout":
        return cls(tuple(raw["columns"]), tuple(raw["dtypes"]))

    def decode(self, rows: list[Optional[bytes]]) -> tuple[dict[str, "np.ndarray"], "np.ndarray"]:
        """Packed rows (None = missing) -> ({column: array}, found mask).

        Categorical columns come back as int64, continuous as float32; missing rows hold the OOV
        code / 0.0.
        """
        import numpy as np

        found = np.fromiter((r is not None for r in rows), dtype=bool, count=len(rows))
        blank = self.blank_row
        buffer = b"".join(r if r is not None else blank for r in rows)
        packed = np.frombuffer(buffer, dtype=self.packed_dtype)
        out = {}
        for column, dtype in zip(self.columns, self.dtypes):
            out[column] = packed[column].astype(np.int64 if dtype == "int32" else np.float32)
        return out, found

    @property
    def blank_row(self) -> bytes:
        import numpy as np

        row = np.zeros(1, dtype=self.packed_dtype)
        for column, dtype in zip(self.columns, self.dtypes):
            row[column] = OOV_CODE if dtype == "int32" else CONTINUOUS_FILL
        return row.tobytes()


@dataclass
class EntityRows:
    """One entity kind (users or items) of a snapshot; arrays are aligned by position."""

    ids: "np.ndarray"  # raw ids, unique: int64, or an object array of str (recsys.data.ids)
    features: list[bytes]  # packed feature rows
    extra: list[bytes]  # users: packed seen item ids (recsys.data.ids.pack); items: display attributes (JSON)
    hashes: "np.ndarray"  # uint64 content hash of features + extra

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Snapshot:
    """Everything one online version holds (see the module docstring)."""

    feature_version: str
    data_version: str
    user_layout: RowLayout
    item_layout: RowLayout
    display_columns: tuple[str, ...]
    users: EntityRows
    items: EntityRows
    popularity: "np.ndarray"  # raw item ids, most popular first
    id_kinds: ids.IdKinds = field(default_factory=ids.IdKinds)

    @property
    def rows(self) -> int:
        return len(self.users) + len(self.items)


# --- building -----------------------------------------------------------------------------------


def build_snapshot(features_dir: Path, data_dir: Path, popularity_size: int = 1000) -> Snapshot:
    """Read a feature version and the data version it was built from into a :class:`Snapshot`.

    Errors name the file and the column.
    """
    import numpy as np
    import pandas as pd

    features = FeatureVersion(Path(features_dir), read_manifest(Path(features_dir)))
    manifest, data_version = features.manifest, features.data_version
    data_dir = Path(data_dir)
    if not data_table(data_dir, "items").exists():
        raise SnapshotError(
            f"{features.path}: its data version {data_version} is not at {data_dir} "
            "(pass the data version folder explicitly)"
        )

    users_frame = _read_parts(features.split_dir("users"))
    items_frame = _read_parts(features.split_dir("items"))
    user_map = pd.read_parquet(features.id_map("user"))
    item_map = pd.read_parquet(features.id_map("item"))
    # the manifest's kinds (feature versions written before kinds were recorded hold int ids)
    kinds = ids.IdKinds.from_dict(manifest.get("ids"), str(features.manifest_file))
    user_ids = _raw_ids(features.id_map("user"), user_map, "user_id", users_frame, kinds.user_id)
    item_ids = _raw_ids(features.id_map("item"), item_map, "item_id", items_frame, kinds.item_id)
    interactions = pd.read_parquet(data_table(data_dir, "interactions"), columns=None)
    raw_items = pd.read_parquet(data_table(data_dir, "items"))
    snapshot = snapshot_from_frames(
        str(manifest["feature_version"]),
        data_version,
        users_frame,
        user_ids,
        items_frame,
        item_ids,
        interactions,
        raw_items,
        popularity_size=popularity_size,
        id_kinds=kinds,
        sources={
            "users": features.split_dir("users"),
            "items": features.split_dir("items"),
            "interactions": data_table(data_dir, "interactions"),
            "raw_items": data_table(data_dir, "items"),
        },
    )
    log.info(
        "snapshot of feature version %s: %d users, %d items, %d popular items",
        snapshot.feature_version, len(user_ids), len(item_ids), len(snapshot.popularity),
    )
    return snapshot


def snapshot_from_frames(
    feature_version: str,
    data_version: str,
    users: "pd.DataFrame",
    user_ids: "np.ndarray",
    items: "pd.DataFrame",
    item_ids: "np.ndarray",
    interactions: "pd.DataFrame",
    raw_items: "pd.DataFrame",
    *,
    popularity_size: int = 1000,
    id_kinds: Optional[ids.IdKinds] = None,
    sources: Optional[dict[str, Path]] = None,
) -> Snapshot:
    """A :class:`Snapshot` from in-memory tables.

    ``users``/``items``: transformed rows (the feature version's ``users/``/``items/`` columns) whose
    raw ids are ``user_ids``/``item_ids`` (same order); ``interactions`` and ``raw_items``: the data
    version's tables. ``id_kinds``: the raw ids' kinds (default: what the id arrays hold).
    ``sources`` names the files in error messages.
    """
    where = {"users": Path("users"), "items": Path("items"), "interactions": Path("interactions"), "raw_items": Path("items.parquet")}
    where.update(sources or {})
    if id_kinds is None:
        id_kinds = ids.IdKinds(ids.kind_of(user_ids), ids.kind_of(item_ids))
    user_ids = ids.as_array(user_ids, id_kinds.user_id)
    item_ids = ids.as_array(item_ids, id_kinds.item_id)
    user_layout = _layout(where["users"], users)
    item_layout = _layout(where["items"], items)
    user_rows = _pack(where["users"], users, user_layout)
    item_rows = _pack(where["items"], items, item_layout)
    for column in ("user_id", "item_id"):
        if column not in interactions.columns:
            raise SnapshotError(f"{where['interactions']}: column {column!r} missing (found {list(interactions.columns)})")
    if "item_id" not in raw_items.columns:
        raise SnapshotError(f"{where['raw_items']}: column 'item_id' missing (found {list(raw_items.columns)})")
    seen = _seen_items(interactions, user_ids, id_kinds)
    display = _display_json(where["raw_items"], raw_items, item_ids)
    return Snapshot(
        feature_version=feature_version,
        data_version=data_version,
        user_layout=user_layout,
        item_layout=item_layout,
        display_columns=tuple(str(c) for c in raw_items.columns if c != "item_id"),
        users=EntityRows(user_ids, user_rows, seen, content_hashes(user_rows, seen)),
        items=EntityRows(item_ids, item_rows, display, content_hashes(item_rows, display)),
        popularity=_popularity(interactions, item_ids, popularity_size, id_kinds.item_id),
        id_kinds=id_kinds,
    )


def content_hashes(features: list[bytes], extra: list[bytes]) -> "np.ndarray":
    """A uint64 per entity over its packed features and its extra value (vectorized, deterministic)."""
    import numpy as np
    import pandas as pd

    first = pd.util.hash_array(np.array(features, dtype=object))
    second = pd.util.hash_array(np.array(extra, dtype=object))
    with np.errstate(over="ignore"):
        return first ^ (second * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019))


def _part_key(path: Path) -> tuple:
    # part_10.parquet after part_9.parquet: the parts' order is the rows' order
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _read_parts(folder: Path) -> "pd.DataFrame":
    import pandas as pd
    import pyarrow.parquet as pq

    parts = sorted((p for p in folder.glob("*.parquet") if not p.name.startswith(("_", "."))), key=_part_key)
    if not parts:
        raise SnapshotError(f"{folder}: no parquet parts (docs/layouts.md, section 3)")
    return pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)


def _raw_ids(path: Path, id_map: "pd.DataFrame", name: str, transformed: "pd.DataFrame", kind: str) -> "np.ndarray":
    import numpy as np

    raw = f"{name}_raw"
    if raw not in id_map.columns:
        raise SnapshotError(f"{path}: column {raw!r} missing (found {list(id_map.columns)})")
    if len(id_map) != len(transformed):
        raise SnapshotError(
            f"{path}: {len(id_map)} rows but the transformed table has {len(transformed)} "
            "(both must follow the input table's row order)"
        )
    if id_map[raw].isna().any():
        raise SnapshotError(f"{path}: column {raw!r} has nulls, e.g. row {int(np.flatnonzero(id_map[raw].isna())[0])}")
    if ids.kind_of(id_map[raw]) != kind:
        raise SnapshotError(
            f"{path}: column {raw!r} holds {id_map[raw].dtype} values but the manifest's ids say {name} is {kind!r}"
        )
    values = ids.as_array(id_map[raw], kind)
    duplicated = id_map[raw].duplicated().to_numpy()
    if duplicated.any():
        raise SnapshotError(f"{path}: column {raw!r} has duplicate ids, e.g. {raw}={ids.show(values[duplicated][0])}")
    return values


def _layout(folder: Path, frame: "pd.DataFrame") -> RowLayout:
    import numpy as np

    dtypes = []
    for column in frame.columns:
        kind = frame[column].dtype.kind
        if kind in "iub":
            dtypes.append("int32")
        elif kind == "f":
            dtypes.append("float32")
        else:
            example = frame[column].iloc[0] if len(frame) else None
            raise SnapshotError(
                f"{folder}: column {column!r} has dtype {frame[column].dtype} (e.g. {example!r}); "
                "the online store packs only encoded (integer) and normalized (float) columns"
            )
        if kind in "iu" and len(frame):
            low, high = frame[column].min(), frame[column].max()
            if low < np.iinfo(np.int32).min or high > np.iinfo(np.int32).max:
                raise SnapshotError(f"{folder}: column {column!r} has values beyond int32, e.g. {column}={high}")
    return RowLayout(tuple(str(c) for c in frame.columns), tuple(dtypes))


def _pack(folder: Path, frame: "pd.DataFrame", layout: RowLayout) -> list[bytes]:
    import numpy as np

    packed = np.zeros(len(frame), dtype=layout.packed_dtype)
    for column, dtype in zip(layout.columns, layout.dtypes):
        values = frame[column]
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise SnapshotError(f"{folder}: column {column!r} has nulls, e.g. row {row}")
        packed[column] = values.to_numpy()
    blob = packed.tobytes()
    size = layout.row_bytes
    return [blob[i : i + size] for i in range(0, len(blob), size)]


def _seen_items(interactions: "pd.DataFrame", user_ids: "np.ndarray", kinds: ids.IdKinds) -> list[bytes]:
    """Per user (in ``user_ids`` order): the unique raw item ids of their interactions, newest first (by
    each item's latest interaction; ties by id), packed (:func:`recsys.data.ids.pack`).

    Newest first because the list is also the query tower's history input (recsys.features.history),
    which reads its first ``history_length`` items.
    """
    import numpy as np

    # Sorting and grouping run on int64 keys: int ids are their own keys, text ids their rank
    # among the distinct values (pandas.factorize, sorted), so both kinds take the same path.
    users, user_values = _int_keys(interactions["user_id"], kinds.user_id)
    items, item_values = _int_keys(interactions["item_id"], kinds.item_id)
    if "timestamp" in interactions.columns:
        times = interactions["timestamp"].to_numpy().astype("datetime64[ns]").astype(np.int64)
    else:
        times = np.zeros(len(users), dtype=np.int64)
    order = np.lexsort((-times, items, users))  # by user, item, newest first: the first of a pair is its latest
    users, items, times = users[order], items[order], times[order]
    keep = np.ones(len(users), dtype=bool)
    keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    users, items, times = users[keep], items[keep], times[keep]
    order = np.lexsort((items, -times, users))  # each user's items newest first
    users, items = users[order], items[order]
    if user_values is None:
        wanted = user_ids
    else:  # the key of each wanted user among the interactions' users (-1: none, so no rows)
        import pandas as pd

        wanted = pd.Index(user_values).get_indexer(user_ids)
    starts = np.searchsorted(users, wanted, side="left")
    ends = np.searchsorted(users, wanted, side="right")
    values = items if item_values is None else item_values[items]
    return ids.pack_groups(values, starts.tolist(), ends.tolist(), kinds.item_id)


def _int_keys(column: "pd.Series", kind: str) -> tuple["np.ndarray", Optional["np.ndarray"]]:
    """(int64 keys ordered like the ids, the id of each key or None when the keys are the ids)."""
    import numpy as np
    import pandas as pd

    if kind == ids.INT:
        return ids.as_array(column, ids.INT), None
    codes, uniques = pd.factorize(column, sort=True)
    return codes.astype(np.int64), ids.as_array(uniques, kind)



def _display_json(path: Path, raw_items: "pd.DataFrame", item_ids: "np.ndarray") -> list[bytes]:
    """Per item (in ``item_ids`` order): its raw attributes as one compact JSON object."""
    import pandas as pd

    by_id = raw_items.set_index("item_id")
    missing = ~pd.Index(item_ids).isin(by_id.index)
    if missing.any():
        raise SnapshotError(f"{path}: item_id={ids.show(item_ids[missing][0])} of the feature version is missing")
    ordered = by_id.loc[item_ids]
    if not len(ordered.columns):
        return [b"{}"] * len(item_ids)
    lines = ordered.reset_index(drop=True).to_json(orient="records", lines=True, date_format="iso")
    encoded = [line.encode("utf-8") for line in lines.split("\n") if line]
    if len(encoded) != len(item_ids):  # a JSON line never holds a raw newline; this guards the assumption
        raise SnapshotError(f"{path}: display attributes could not be serialized row by row")
    return encoded


def _popularity(interactions: "pd.DataFrame", item_ids: "np.ndarray", size: int, kind: str) -> "np.ndarray":
    """Raw item ids by engaged interactions (label 1 when there are labels), most first; ties by id."""
    import numpy as np

    frame = interactions
    if "label" in frame.columns:
        frame = frame[frame["label"] == 1]
    counts = frame["item_id"].value_counts()
    counts = counts[counts.index.isin(item_ids)]
    popular = ids.as_array(counts.index, kind)
    order = np.lexsort((popular, -counts.to_numpy()))
    return popular[order][:size]
