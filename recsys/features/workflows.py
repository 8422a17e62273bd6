"""NVTabular workflow definitions: one for user features, one for item features.

The two workflows are fitted and saved apart because serving transforms a user (query side) and
the candidate items separately. Both are fitted on every interaction of the data version (the ETL
explains why): the published models are refitted on training and validation together and need an
embedding of their own for every user and item. No label is used in fitting.

Encoding of categorical columns (NVTabular 23.08 ``Categorify``): index 0 is reserved (padding),
1 is null, 2 is out-of-vocabulary (ids and values never seen in fitting, e.g. at serving time), then the
known values from 3 up, most frequent first.

Continuous columns: ``Normalize`` (mean / sample std over the non-missing training values), then
missing values are filled with 0, i.e. with the training mean.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import nvtabular as nvt
import pandas as pd
from merlin.schema import ColumnSchema, Schema, Tags
from nvtabular import ops

from recsys.data.contract import FeatureColumns

# Bump when the graphs below change: it is part of the feature version hash.
WORKFLOW_DEFINITION_VERSION = 2  # 2: fitted on every interaction (was: the training window)

USER_ID = "user_id"
ITEM_ID = "item_id"
TARGET = "click"
TIMESTAMP = "timestamp"


def _entity_graph(
    id_column: str,
    features: FeatureColumns,
    id_tagger: ops.Operator,
    feature_tagger: type[ops.Operator],
    categories_path: Path,
) -> nvt.WorkflowNode:
    node = [id_column] >> ops.Categorify(out_path=str(categories_path)) >> id_tagger
    if features.categorical:
        node += (
            features.categorical
            >> ops.Categorify(out_path=str(categories_path))
            >> feature_tagger()
        )
    if features.continuous:
        # Normalize first so missing values do not skew the statistics; the fill then maps a
        # missing value to the training mean (0 after normalization).
        node += (
            features.continuous
            >> ops.Normalize(out_dtype=np.float32)
            >> ops.FillMissing(fill_val=0.0)
            >> feature_tagger()
        )
    return node


def build_user_workflow(features: FeatureColumns, categories_path: Path) -> nvt.Workflow:
    """Workflow: raw ``user_id`` + user features -> encoded id (USER_ID) + encoded/normalized features (USER)."""
    return nvt.Workflow(
        _entity_graph(USER_ID, features, ops.TagAsUserID(), ops.TagAsUserFeatures, categories_path)
    )


def build_item_workflow(features: FeatureColumns, categories_path: Path) -> nvt.Workflow:
    """Workflow: raw ``item_id`` + item features -> encoded id (ITEM_ID) + encoded/normalized features (ITEM)."""
    return nvt.Workflow(
        _entity_graph(ITEM_ID, features, ops.TagAsItemID(), ops.TagAsItemFeatures, categories_path)
    )


def portable_schema(schema: Schema) -> Schema:
    """Drop ``cat_path`` (an absolute path to the fit-time scratch folder) from column properties."""
    columns = []
    for column in schema:
        properties = {k: v for k, v in column.properties.items() if k != "cat_path"}
        columns.append(dataclasses.replace(column, properties=properties))
    return Schema(columns)


def interaction_schema(user_workflow: nvt.Workflow, item_workflow: nvt.Workflow) -> Schema:
    """Schema of train/ and valid/: ids, user and item features, ``click`` target, ``timestamp``."""
    target = ColumnSchema(
        TARGET,
        dtype=np.int32,
        tags=[Tags.TARGET, Tags.BINARY_CLASSIFICATION],
        properties={"domain": {"min": 0, "max": 1, "name": TARGET}},
    )
    timestamp = ColumnSchema(TIMESTAMP, dtype=np.int64, tags=[Tags.TIME])
    return portable_schema(
        user_workflow.output_schema + item_workflow.output_schema + Schema([target, timestamp])
    )


def embedding_cardinalities(*workflows: nvt.Workflow) -> dict[str, int]:
    """Embedding table size of every categorified column (highest index + 1)."""
    sizes: dict[str, int] = {}
    for workflow in workflows:
        for column, (cardinality, _dim) in ops.get_embedding_sizes(workflow).items():
            sizes[column] = int(cardinality)
    return sizes
