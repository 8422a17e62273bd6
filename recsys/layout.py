"""Where every versioned artifact lives: the one module that composes their paths (docs/layouts.md).

    <data_root>/<data_version>/              data_dir()             written by ingest
        manifest.json  interactions.parquet  users.parquet  items.parquet
    <features_root>/<feature_version>/       FeatureVersion         written by the ETL
        manifest.json  train/  valid/  users/  items/  id_maps/{users,items}.parquet  workflows/{user,item}/
    <run>/                                   RunExports             a training output = its MLflow artifacts
        retrieval/query_tower/  retrieval/item_embeddings.parquet  ranking/dlrm/  workflows/  checksums.json
    <triton repository>/                     TritonRepository       written by publishing
        <model>/config.pbtxt                 the served version's config (version_policy specific [N])
        <model>/<N>/config.pbtxt, lineage.json, ...   one complete version, its own config copy
        publish_history.jsonl
        siblings (same file system, invisible to Triton): .<name>.staging/  .<name>.rolled_back/  .<name>.publish.lock

Each hop writes a whole new folder and switches one pointer (:mod:`recsys.data.versioning`); this
module only says where things are. Rejected: paths composed where they are used (the same folder was
spelled in six modules, one of them as ``features_dir.parent.parent / "data"``, wrong as soon as
``data_root`` is set on its own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from recsys.data.versioning import MANIFEST
from recsys.errors import InputError

if TYPE_CHECKING:
    from recsys.settings import Settings

# --- data versions -------------------------------------------------------------------------------
DATA_TABLES = ("interactions", "users", "items")


def data_dir(where: "Settings | Path", data_version: str) -> Path:
    """The folder of a data version (complete when it holds a manifest); ``where``: the settings, or
    the data root itself."""
    root = where if isinstance(where, Path) else where.data_root
    return root / data_version


def data_table(data_dir: Path, table: str) -> Path:
    return Path(data_dir) / f"{table}.parquet"


def is_complete(folder: Path) -> bool:
    """A version folder is complete when its manifest is there (it is written last)."""
    return (Path(folder) / MANIFEST).is_file()


# --- feature versions ----------------------------------------------------------------------------
SPLITS = ("train", "valid", "users", "items")


class FeatureVersionError(InputError):
    """A feature version folder is missing a part or does not follow the layout."""


@dataclass(frozen=True)
class FeatureVersion:
    """One feature version: where its parts are, its manifest and the column roles it declares.

    ``created``: True when the ETL that returned it wrote it now (False: it existed, same data and
    same ETL configuration). Merlin is imported only by :meth:`dataset` / :meth:`frame`.
    """

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict, compare=False)
    created: bool = False

    @classmethod
    def of(cls, where: "Settings | Path", feature_version: str) -> "FeatureVersion":
        """The folder of ``feature_version`` (not opened: no checks); ``where``: the settings, or the
        features root itself."""
        root = where if isinstance(where, Path) else where.features_root
        return cls(root / feature_version)

    @classmethod
    def open(cls, path: Path, created: bool = False) -> "FeatureVersion":
        """Check the layout and read the manifest; raises FeatureVersionError naming what is wrong."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise FeatureVersionError(f"{manifest_path}: missing; is {path} a feature version folder?")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise FeatureVersionError(f"{manifest_path}: not valid JSON ({exc})") from None
        for key in ("feature_version", "data_version", "columns", "has_labels"):
            if key not in manifest:
                raise FeatureVersionError(f"{manifest_path}: key {key!r} missing")
        for key in ("user_id", "item_id", "target"):
            if key not in manifest["columns"]:
                raise FeatureVersionError(f"{manifest_path}: columns.{key} missing")
        fv = cls(path=path, manifest=manifest, created=created)
        for split in SPLITS:
            if not fv.split_dir(split).is_dir():
                raise FeatureVersionError(f"{fv.split_dir(split)}: folder missing (the layout needs {SPLITS})")
        if not fv.id_map("item").is_file():
            raise FeatureVersionError(f"{fv.id_map('item')}: missing")
        return fv

    # --- paths -------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.path.name

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST

    @property
    def exists(self) -> bool:
        return is_complete(self.path)

    def split_dir(self, split: str) -> Path:
        return self.path / split

    def id_map(self, entity: str) -> Path:
        """``id_maps/{users,items}.parquet``: raw id <-> encoded id (``entity``: ``user`` or ``item``)."""
        return self.path / "id_maps" / f"{entity}s.parquet"

    @property
    def workflows(self) -> Path:
        """The fitted NVTabular workflows (``user/``, ``item/``)."""
        return self.path / "workflows"

    def workflow(self, entity: str) -> Path:
        return self.workflows / entity

    def data_dir(self, settings: "Settings") -> Path:
        """The data version this feature version was built from."""
        return data_dir(settings, self.data_version)

    # --- column roles ------------------------------------------------------------------------
    @property
    def columns(self) -> dict[str, Any]:
        return self.manifest["columns"]

    @property
    def user_id(self) -> str:
        return self.columns["user_id"]

    @property
    def item_id(self) -> str:
        return self.columns["item_id"]

    @property
    def target(self) -> str:
        return self.columns["target"]

    @property
    def user_columns(self) -> list[str]:
        """The query tower's inputs: user id first, then user features."""
        return [self.user_id, *self.columns.get("user_categorical", []), *self.columns.get("user_continuous", [])]

    @property
    def item_columns(self) -> list[str]:
        """The candidate tower's inputs: item id first, then item features."""
        return [self.item_id, *self.columns.get("item_categorical", []), *self.columns.get("item_continuous", [])]

    @property
    def has_labels(self) -> bool:
        return bool(self.manifest["has_labels"])

    @property
    def feature_version(self) -> str:
        return str(self.manifest.get("feature_version", self.version))

    @property
    def data_version(self) -> str:
        return str(self.manifest["data_version"])

    # --- data --------------------------------------------------------------------------------
    def dataset(self, split: str):
        """The split as a ``merlin.io.Dataset`` with the schema written beside the parquet parts."""
        import merlin.io

        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        folder = self.split_dir(split)
        parts = sorted(folder.glob("*.parquet"))
        if not parts:
            raise FeatureVersionError(f"{folder}: no parquet parts")
        # Given the folder, merlin reads the schema the ETL wrote beside the parts.
        dataset = merlin.io.Dataset(str(folder), engine="parquet")
        wanted = set(self.user_columns if split == "users" else [])
        wanted |= set(self.item_columns if split == "items" else [])
        if split in ("train", "valid"):
            wanted = set(self.user_columns) | set(self.item_columns) | {self.target}
        missing = sorted(wanted - set(dataset.schema.column_names))
        if missing:
            raise FeatureVersionError(
                f"{folder}: columns {missing} named in manifest.json are not in the data "
                f"(found {dataset.schema.column_names})"
            )
        return dataset

    def frame(self, split: str, columns: Optional[list[str]] = None):
        """The split as one pandas DataFrame (the training data of this project fits in memory)."""
        ddf = self.dataset(split).to_ddf()
        if columns is not None:
            ddf = ddf[columns]
        return ddf.compute().reset_index(drop=True)

    def item_id_map(self):
        """DataFrame with ``item_id_raw`` and ``item_id`` (encoded)."""
        import pandas as pd

        path = self.id_map("item")
        frame = pd.read_parquet(path)
        for column in ("item_id_raw", "item_id"):
            if column not in frame.columns:
                raise FeatureVersionError(f"{path}: column {column!r} missing (found {list(frame.columns)})")
        return frame


# --- training runs -------------------------------------------------------------------------------
CHECKSUMS_FILE = "checksums.json"
"""``{relative path: sha256}`` of every file of a training output; verified before anything loads it."""
RETRIEVAL, RANKING, WORKFLOWS = "retrieval", "ranking", "workflows"
"""The run's top folders; ``retrieval`` and ``ranking`` are also the registered models' roles."""


@dataclass(frozen=True)
class RunExports:
    """A training output (``recsys train --out``), laid out like the MLflow run's artifacts."""

    path: Path

    # retrieval/: the two-tower's exports; ranking/: the ranker's (the registered models' folders)
    query_tower = property(lambda self: self.path / RETRIEVAL / "query_tower", doc="SavedModel: user features (+ history) -> query embedding")
    item_embeddings = property(lambda self: self.path / RETRIEVAL / "item_embeddings.parquet",
                               doc="Parquet: item_id (encoded), item_id_raw, embedding (list<float32>)")
    dlrm = property(lambda self: self.path / RANKING / "dlrm", doc="SavedModel: the ranker")
    workflows = property(lambda self: self.path / WORKFLOWS, doc="the fitted NVTabular workflows (user/, item/)")
    checksums = property(lambda self: self.path / CHECKSUMS_FILE)
    metrics = property(lambda self: self.path / "metrics.json",
                       doc="what the training measured (written last: the run folder is complete)")

    def workflow(self, entity: str) -> Path:
        return self.workflows / entity

    def exports(self) -> dict[str, Path]:
        """``{"query_tower", "item_embeddings", "dlrm", "workflows"}`` -> path."""
        return {"query_tower": self.query_tower, "item_embeddings": self.item_embeddings, "dlrm": self.dlrm,
                "workflows": self.workflows}


EXPECTED_FILES: dict[str, tuple[str, ...]] = {
    RETRIEVAL: ("query_tower/saved_model.pb", "item_embeddings.parquet"),
    RANKING: ("dlrm/saved_model.pb",),
}
"""What each role's folder of a run must hold (relative to ``<run>/<role>/``)."""


# --- the Triton repository -----------------------------------------------------------------------
CONFIG_FILE = "config.pbtxt"
LINEAGE_FILE = "lineage.json"
HISTORY_FILE = "publish_history.jsonl"


@dataclass(frozen=True)
class TritonRepository:
    """Triton's model repository and its hidden siblings (same file system: renames are atomic)."""

    path: Path

    def model_dir(self, model: str) -> Path:
        return self.path / model

    def config(self, model: str) -> Path:
        """The config Triton reads: it pins the served version."""
        return self.path / model / CONFIG_FILE

    def version_dir(self, model: str, version: int) -> Path:
        return self.path / model / str(int(version))

    def version_config(self, model: str, version: int) -> Path:
        """The version's own copy of its config (put back by a rollback)."""
        return self.version_dir(model, version) / CONFIG_FILE

    def lineage(self, model: str, version: int) -> Path:
        return self.version_dir(model, version) / LINEAGE_FILE

    def seal(self, model: str, version: int) -> Path:
        """The size and sha256 of every file of the version, recorded when it was sealed (checked at load)."""
        return self.version_dir(model, version) / CHECKSUMS_FILE

    def versions(self, model: str) -> list[int]:
        """The version folders of ``model`` on disk, ascending."""
        folder = self.model_dir(model)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())

    def models(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.is_dir()) if self.path.is_dir() else []

    @property
    def history(self) -> Path:
        return self.path / HISTORY_FILE

    def _sibling(self, suffix: str) -> Path:
        return self.path.parent / f".{self.path.name}.{suffix}"

    @property
    def staging_root(self) -> Path:
        return self._sibling("staging")

    @property
    def rolled_back(self) -> Path:
        """Where a rollback moves the newer versions (evidence, never served again)."""
        return self._sibling("rolled_back")

    @property
    def lock_file(self) -> Path:
        return self._sibling("publish.lock")
