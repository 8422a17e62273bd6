"""The NVTabular ETL: a data version in, a feature version out (docs/layouts.md, sections 2 and 3).

Stages:
1. read the data version and check it (tables, columns, ids known to users/items);
2. split interactions into training and validation (:mod:`recsys.features.split`: the last days, or
   each user's newest interactions, whichever the data supports);
3. fit the user and item workflows on every interaction joined with the user/item features (so
   vocabularies are frequency-ordered and statistics are weighted as the model sees them). Every
   interaction, not only the training ones: the published models are refitted on training and
   validation together, and must have an embedding of their own for the newest users and items.
   No label is used in fitting; evaluation leaves out users without training interactions;
4. transform the full users and items tables, then build train/ and valid/ by joining the
   interactions with the transformed rows (the workflows are row-wise after fitting, so a join
   gives exactly what transforming every interaction row would, at the cost of one lookup);
5. write everything under a temporary sibling folder and rename it into place.

Runs in the Merlin runtime. With a Dask scheduler address, every Dask computation (fit,
transform, writes) runs on that cluster; otherwise on local threads.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
from merlin.io import Dataset

from recsys.data import ids
from recsys.data.contract import FeatureColumns, feature_columns, nullable_features
from recsys.data.versioning import MANIFEST, atomic_directory, content_hash, sha256_file, utc_now_iso, write_json_atomic
from recsys.errors import InputError
from recsys.layout import DATA_TABLES as TABLES, FeatureVersion, data_table, is_complete
from recsys.features.split import SplitError, ValidationSplit, plan_split
from recsys.features.workflows import (
    ITEM_ID,
    TARGET,
    TIMESTAMP,
    USER_ID,
    WORKFLOW_DEFINITION_VERSION,
    build_item_workflow,
    build_user_workflow,
    embedding_cardinalities,
    interaction_schema,
    portable_schema,
)

Progress = Callable[[str], Any]

# merlin.io warns on every CPU Dataset; running on CPU is this project's normal case.
warnings.filterwarnings("ignore", message="Initializing an NVTabular Dataset in CPU mode", category=UserWarning)

# Interaction columns that are not features; user/item feature names must not collide with them.
_RESERVED = {USER_ID, ITEM_ID, TIMESTAMP, TARGET, "label", "event_type"}


class EtlError(InputError):
    """The data version cannot be turned into features (names the file, column and a value)."""


def feature_version_id(data_version: str, split: ValidationSplit) -> str:
    """Short content hash of the data version and the ETL configuration."""
    config = {**split.config(), "workflow_definition_version": WORKFLOW_DEFINITION_VERSION}
    return content_hash("feature-version", data_version, config)


def run_etl(
    data_dir: Path,
    features_root: Path,
    split: ValidationSplit,
    dask_scheduler_address: Optional[str] = None,
    progress: Progress = print,
) -> FeatureVersion:
    """Turn the data version in ``data_dir`` into ``features_root/<feature_version>/``.

    An existing complete feature version is returned untouched. On any error nothing is left
    under ``features_root``.
    """
    data_dir, features_root = Path(data_dir), Path(features_root)
    data_manifest = _read_data_manifest(data_dir)
    version = feature_version_id(data_manifest["data_version"], split)
    target = FeatureVersion.of(features_root, version).path
    if is_complete(target):
        progress(f"[etl] feature version {version} already exists at {target}: nothing to do")
        return FeatureVersion.open(target, created=False)

    progress(
        f"[etl] data version {data_manifest['data_version']} -> feature version {version} "
        f"({split.kind} split, validation_days={split.days}, validation_fraction={split.fraction}, "
        f"dask={dask_scheduler_address or 'local threads'})"
    )
    started = time.perf_counter()
    with atomic_directory(target) as out_dir, _dask_execution(dask_scheduler_address):
        manifest = _build(data_dir, out_dir, version, data_manifest, split, progress)
    rows = manifest["rows"]["train"] + manifest["rows"]["valid"]
    seconds = time.perf_counter() - started
    progress(f"[etl] done: {rows} interactions in {seconds:.1f}s ({rows / seconds:,.0f} rows/s) -> {target}")
    return FeatureVersion.open(target, created=True)


# --- stages -----------------------------------------------------------------------------------


def _build(
    data_dir: Path,
    out_dir: Path,
    version: str,
    data_manifest: dict[str, Any],
    split: ValidationSplit,
    progress: Progress,
) -> dict[str, Any]:
    staged = FeatureVersion(out_dir)  # the temporary folder, laid out like the version it becomes
    with _stage(progress, "read") as note:
        interactions = dd.read_parquet(data_table(data_dir, "interactions"))
        # Nullable int/bool features: a workflow fitted on plain int64/bool refuses an empty value at
        # transform time, and later data versions can hold empty ones (users first seen live), which
        # the gate re-scores with this version's workflows. The encodings are the same either way.
        users = nullable_features(pd.read_parquet(data_table(data_dir, "users")).reset_index(drop=True), USER_ID)
        items = nullable_features(pd.read_parquet(data_table(data_dir, "items")).reset_index(drop=True), ITEM_ID)
        user_features, item_features = _check_tables(data_dir, interactions, users, items)
        has_labels = "label" in interactions.columns
        id_kinds = ids.IdKinds.from_dict(data_manifest.get("ids"), str(data_dir / MANIFEST))
        interactions = _events(interactions, has_labels, id_kinds)
        ts_min, ts_max, total, unknown_users, unknown_items = dask.compute(
            interactions[TIMESTAMP].min(),
            interactions[TIMESTAMP].max(),
            interactions.shape[0],
            (~interactions[USER_ID].isin(users[USER_ID].to_numpy())).sum(),
            (~interactions[ITEM_ID].isin(items[ITEM_ID].to_numpy())).sum(),
        )
        if total == 0:
            raise EtlError(f"{data_table(data_dir, 'interactions')}: the table is empty")
        _refuse_unknown_ids(data_dir, interactions, users, USER_ID, unknown_users)
        _refuse_unknown_ids(data_dir, interactions, items, ITEM_ID, unknown_items)
        note(f"{total} interactions, {len(users)} users, {len(items)} items")

    with _stage(progress, "split") as note:
        keys = interactions[[USER_ID, ITEM_ID, TIMESTAMP]].compute()
        try:
            plan = plan_split(split, keys[USER_ID].to_numpy(), keys[ITEM_ID].to_numpy(), keys[TIMESTAMP].to_numpy())
        except SplitError as exc:
            raise EtlError(f"{data_table(data_dir, 'interactions')}: {exc} (column timestamp, newest {_iso(ts_max)})") from None
        del keys
        flagged = interactions.map_partitions(_flag_validation, plan)
        train_events = flagged[~flagged["_valid"]].drop(columns="_valid")
        valid_events = flagged[flagged["_valid"]].drop(columns="_valid")
        train_rows = int(train_events.shape[0].compute())
        if train_rows == 0 or train_rows == total:
            raise EtlError(f"{data_table(data_dir, 'interactions')}: the split left {train_rows} of {total} rows for "
                           f"training ({plan.reason}); nothing to {'train' if train_rows == 0 else 'validate'} on")
        note(f"{plan.reason}; train {train_rows} rows, valid {total - train_rows} rows")

    with _stage(progress, "fit workflows on every interaction") as note:
        all_joined = (
            interactions.merge(users, on=USER_ID, how="inner").merge(items, on=ITEM_ID, how="inner")
        ).persist()  # read once, fitted twice
        scratch = out_dir / "_fit_categories"
        user_workflow = build_user_workflow(user_features, scratch / "user")
        item_workflow = build_item_workflow(item_features, scratch / "item")
        for table, workflow, columns in (
            ("users", user_workflow, [USER_ID] + user_features.all),
            ("items", item_workflow, [ITEM_ID] + item_features.all),
        ):
            try:
                workflow.fit(Dataset(all_joined[columns], cpu=True))
            except Exception as exc:  # NVTabular names the column; add the file
                raise EtlError(f"{data_table(data_dir, table)}: fitting the features failed: {exc}") from exc
        del all_joined
        # Saving copies the vocabularies into the workflow folders and points the ops there.
        user_workflow.save(staged.workflow("user"))
        item_workflow.save(staged.workflow("item"))
        shutil.rmtree(scratch)
        cardinalities = embedding_cardinalities(user_workflow, item_workflow)
        note(f"{total} rows; cardinalities {cardinalities}")

    with _stage(progress, "transform users and items") as note:
        users_out = _transform_entities(user_workflow, users, staged.split_dir("users"))
        items_out = _transform_entities(item_workflow, items, staged.split_dir("items"))
        staged.id_map("user").parent.mkdir()
        _id_map(users, users_out, USER_ID).to_parquet(staged.id_map("user"), index=False)
        _id_map(items, items_out, ITEM_ID).to_parquet(staged.id_map("item"), index=False)
        note(f"{len(users_out)} users, {len(items_out)} items")

    schema = interaction_schema(user_workflow, item_workflow)
    rows = {"users": len(users_out), "items": len(items_out)}
    for part, events in (("train", train_events), ("valid", valid_events)):
        with _stage(progress, f"write {part}") as note:
            table = _nonempty_partitions(_join_features(events, users, users_out, items, items_out)[schema.column_names])
            Dataset(table, schema=schema, cpu=True).to_parquet(staged.split_dir(part))
            rows[part] = Dataset(staged.split_dir(part), engine="parquet", cpu=True).num_rows
            note(f"{rows[part]} rows")

    manifest = {
        "feature_version": version,
        "data_version": data_manifest["data_version"],
        "created_at": utc_now_iso(),
        "validation_days": int(split.days),
        "workflow_definition_version": WORKFLOW_DEFINITION_VERSION,
        "split": {
            **plan.manifest(),
            "first": _iso(ts_min),
            "last": _iso(ts_max),
            **_split_ranges(train_events, valid_events),
        },
        "rows": rows,
        "columns": {
            "user_id": USER_ID,
            "item_id": ITEM_ID,
            "target": TARGET,
            "timestamp": TIMESTAMP,
            "user_categorical": user_features.categorical,
            "user_continuous": user_features.continuous,
            "item_categorical": item_features.categorical,
            "item_continuous": item_features.continuous,
        },
        "cardinalities": cardinalities,
        "has_labels": has_labels,
        "ids": id_kinds.to_dict(),  # raw id kinds, from the data version (id_maps/ hold them raw)
        "schema": {
            column.name: {"dtype": str(column.dtype.to_numpy), "tags": sorted(t.value for t in column.tags)}
            for column in schema
        },
        "input_hashes": {name: sha256_file(data_table(data_dir, name)) for name in TABLES},
    }
    write_json_atomic(staged.manifest_file, manifest)
    return manifest


def _flag_validation(partition: pd.DataFrame, plan) -> pd.DataFrame:
    mask = plan.is_validation(partition[USER_ID].to_numpy(), partition[ITEM_ID].to_numpy(), partition[TIMESTAMP].to_numpy())
    return partition.assign(_valid=mask)


def _split_ranges(train: dd.DataFrame, valid: dd.DataFrame) -> dict[str, str]:
    """First and last timestamp of each side (a time split: train ends where validation starts)."""
    t_min, t_max, v_min, v_max = dask.compute(train[TIMESTAMP].min(), train[TIMESTAMP].max(),
                                              valid[TIMESTAMP].min(), valid[TIMESTAMP].max())
    return {"train_start": _iso(t_min), "train_end": _iso(t_max), "valid_start": _iso(v_min), "valid_end": _iso(v_max)}


def _check_tables(
    data_dir: Path, interactions: dd.DataFrame, users: pd.DataFrame, items: pd.DataFrame
) -> tuple[FeatureColumns, FeatureColumns]:
    for table, frame, required in (
        ("interactions", interactions, [USER_ID, ITEM_ID, TIMESTAMP]),
        ("users", users, [USER_ID]),
        ("items", items, [ITEM_ID]),
    ):
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise EtlError(
                f"{data_table(data_dir, table)}: missing column(s) {missing}; found {list(frame.columns)}"
            )
    user_features = feature_columns(users, USER_ID)
    item_features = feature_columns(items, ITEM_ID)
    # Users and items share one row in train/, so their feature names must differ.
    for table, features, other in (
        ("users", user_features, set(item_features.all)),
        ("items", item_features, set(user_features.all)),
    ):
        for column in features.all:
            if column in _RESERVED or column in other:
                raise EtlError(
                    f"{data_table(data_dir, table)}: feature column {column!r} clashes with an "
                    f"interaction column or a feature of the other table; rename it"
                )
    return user_features, item_features


def _events(interactions: dd.DataFrame, has_labels: bool, id_kinds: ids.IdKinds) -> dd.DataFrame:
    """user_id, item_id (raw: int64, or str for string ids), click (int32 0/1), timestamp (int64 unix seconds)."""
    timestamp = interactions[TIMESTAMP]
    if pd.api.types.is_datetime64_any_dtype(timestamp.dtype):
        timestamp = timestamp.astype("datetime64[ns]").astype("int64") // 1_000_000_000
    else:  # integer unix seconds
        timestamp = timestamp.astype("int64")
    events = interactions[[USER_ID, ITEM_ID]]
    int_ids = [c for c in (USER_ID, ITEM_ID) if id_kinds.of(c) == ids.INT]
    if int_ids:
        events = events.astype({c: "int64" for c in int_ids})
    events[TARGET] = interactions["label"].astype("int32") if has_labels else np.int32(1)
    events[TIMESTAMP] = timestamp
    return events


def _refuse_unknown_ids(
    data_dir: Path, interactions: dd.DataFrame, entities: pd.DataFrame, column: str, count: int
) -> None:
    if count:
        known = entities[column].to_numpy()
        example = interactions[~interactions[column].isin(known)][column].head(1, npartitions=-1).iloc[0]
        table = "users" if column == USER_ID else "items"
        raise EtlError(
            f"{data_table(data_dir, 'interactions')}: column {column}: {count} rows reference ids missing "
            f"from {table}.parquet, e.g. {example}"
        )


def _transform_entities(workflow: Any, table: pd.DataFrame, out_path: Path) -> pd.DataFrame:
    """Transform a whole users/items table, write it (with schema) and return it in input order."""
    transformed = workflow.transform(Dataset(table, cpu=True)).to_ddf().compute().reset_index(drop=True)
    if len(transformed) != len(table):  # the id map relies on row order being kept
        raise EtlError(f"transforming {out_path.name} changed the row count: {len(table)} -> {len(transformed)}")
    Dataset(transformed, schema=portable_schema(workflow.output_schema), cpu=True).to_parquet(out_path)
    return transformed


def _id_map(raw: pd.DataFrame, encoded: pd.DataFrame, column: str) -> pd.DataFrame:
    return pd.DataFrame({f"{column}_raw": raw[column].to_numpy(), column: encoded[column].to_numpy()})


def _join_features(
    events: dd.DataFrame,
    users: pd.DataFrame,
    users_out: pd.DataFrame,
    items: pd.DataFrame,
    items_out: pd.DataFrame,
) -> dd.DataFrame:
    """Replace raw ids by encoded ids and add the transformed features (broadcast joins)."""
    user_lookup = users_out.assign(**{f"{USER_ID}_raw": users[USER_ID].to_numpy()})
    item_lookup = items_out.assign(**{f"{ITEM_ID}_raw": items[ITEM_ID].to_numpy()})
    events = events.rename(columns={USER_ID: f"{USER_ID}_raw", ITEM_ID: f"{ITEM_ID}_raw"})
    joined = events.merge(user_lookup, on=f"{USER_ID}_raw", how="inner")
    return joined.merge(item_lookup, on=f"{ITEM_ID}_raw", how="inner")


# --- helpers ----------------------------------------------------------------------------------


def _nonempty_partitions(frame: dd.DataFrame) -> dd.DataFrame:
    """``frame`` without its empty partitions (computed once, kept in memory for the write).

    A time split leaves partitions of a time-ordered table empty on one side, and Merlin's parquet
    writer sizes row groups from the rows it is given: an empty partition divides by zero
    (``OverflowError: cannot convert float infinity to integer``, seen at 10M interactions).
    """
    frame = frame.persist()
    lengths = frame.map_partitions(len).compute().tolist()
    keep = [index for index, length in enumerate(lengths) if length]
    if len(keep) == frame.npartitions or not keep:
        return frame
    return frame.partitions[keep]


def _read_data_manifest(data_dir: Path) -> dict[str, Any]:
    if not data_dir.is_dir():
        raise EtlError(f"{data_dir}: data version folder does not exist")
    for name in TABLES:
        if not data_table(data_dir, name).exists():
            raise EtlError(f"{data_dir}: missing table {name}.parquet (see docs/layouts.md, section 2)")
    manifest_path = data_dir / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise EtlError(f"{manifest_path}: cannot read the data version manifest ({exc})") from None
    if not manifest.get("data_version"):
        raise EtlError(f"{manifest_path}: no 'data_version' field")
    return manifest


@contextlib.contextmanager
def _dask_execution(address: Optional[str]) -> Iterator[None]:
    """Run NVTabular and every Dask computation on the cluster at ``address``, or on local threads."""
    from merlin.core.utils import global_dask_client, set_dask_client

    previous = global_dask_client()
    try:
        if address is None:
            set_dask_client(None)  # don't pick up a client that happens to exist in this process
            with dask.config.set(scheduler="threads"):
                yield
            return
        from distributed import Client

        try:
            client = Client(address, timeout="30s", set_as_default=True)
        except OSError as exc:
            raise EtlError(
                f"cannot reach the Dask scheduler at {address} ({exc}). Is it running? `recsys stack status` tells; "
                "the distributed topology's cluster starts with `recsys stack up --only dask`, its logs are in "
                "<home>/services/dask/"
            ) from None
        set_dask_client(client)
        try:
            yield
        finally:
            client.close()
    finally:
        set_dask_client(previous if previous is not None else "auto")


@contextlib.contextmanager
def _stage(progress: Progress, name: str) -> Iterator[Callable[[str], None]]:
    """Log ``[etl] <name>: <details> (<seconds>s)`` when the stage ends."""
    details: list[str] = []
    started = time.perf_counter()
    progress(f"[etl] {name} ...")
    yield details.append
    progress(f"[etl] {name}: {'; '.join(details)} ({time.perf_counter() - started:.1f}s)")


def _iso(unix_seconds: int) -> str:
    return pd.Timestamp(int(unix_seconds), unit="s").isoformat()
