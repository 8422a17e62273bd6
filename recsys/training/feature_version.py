"""Read a feature version folder (docs/layouts.md section 3) for training.

Everything training needs to know about columns comes from ``manifest.json``; the merlin schema
(tags, embedding table sizes) comes from the parquet folders themselves. Merlin imports happen
inside the functions so that this module stays importable without the Merlin runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError

SPLITS = ("train", "valid", "users", "items")


class FeatureVersionError(RecsysError):
    """A feature version folder is missing a part or does not follow the layout."""


@dataclass(frozen=True)
class FeatureVersion:
    """An opened feature version: its path, manifest and the column roles it declares."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: Path) -> "FeatureVersion":
        """Check the layout and read the manifest; raises FeatureVersionError naming what is wrong."""
        path = Path(path)
        manifest_path = path / "manifest.json"
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
        for split in SPLITS:
            if not (path / split).is_dir():
                raise FeatureVersionError(f"{path / split}: folder missing (the layout needs {SPLITS})")
        if not (path / "id_maps" / "items.parquet").is_file():
            raise FeatureVersionError(f"{path / 'id_maps' / 'items.parquet'}: missing")
        return cls(path=path, manifest=manifest)

    # --- column roles ------------------------------------------------------------------
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
        return str(self.manifest["feature_version"])

    @property
    def data_version(self) -> str:
        return str(self.manifest["data_version"])

    # --- data --------------------------------------------------------------------------
    def dataset(self, split: str):
        """The split as a ``merlin.io.Dataset`` with the schema written beside the parquet parts."""
        import merlin.io

        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        folder = self.path / split
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

    def frame(self, split: str, columns: list[str] | None = None):
        """The split as one pandas DataFrame (the training data of this project fits in memory)."""
        ddf = self.dataset(split).to_ddf()
        if columns is not None:
            ddf = ddf[columns]
        return ddf.compute().reset_index(drop=True)

    def item_id_map(self):
        """DataFrame with ``item_id_raw`` and ``item_id`` (encoded)."""
        import pandas as pd

        path = self.path / "id_maps" / "items.parquet"
        frame = pd.read_parquet(path)
        for column in ("item_id_raw", "item_id"):
            if column not in frame.columns:
                raise FeatureVersionError(f"{path}: column {column!r} missing (found {list(frame.columns)})")
        return frame

