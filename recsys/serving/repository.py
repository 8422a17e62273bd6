"""Write Triton model versions from training exports (docs/serving.md, docs/layouts.md section 4).

    from recsys.serving.repository import exports_from_run, pipeline_from_settings, write_model_versions
    pipeline = pipeline_from_settings(settings, feature_manifest)
    dirs = write_model_versions(exports_from_run(run_dir), settings.triton_repo, version=4, pipeline=pipeline,
                                lineage={...})
    # then recsys.serving.control.load_model(settings, name) for each model

Repository layout (one folder per model, one sub-folder per version, each version complete on its own):

    recsys/config.pbtxt               the served version (version_policy specific) and the I/O contract
    recsys/<N>/model.py               python backend: the four stages (recsys.serving.engine)
    recsys/<N>/query_tower/           SavedModel copy          recsys/<N>/ranker/   SavedModel copy
    recsys/<N>/index/                 FAISS index + id maps    recsys/<N>/pipeline.json   settings frozen at publish
    recsys/<N>/config.pbtxt           this version's model config (what a rollback restores)
    recsys/<N>/lineage.json           MLflow versions, feature version, Airflow run, created_at
    recsys_query_tower/<N>/model.savedmodel/ (+ model.py in the python flavour)
    recsys_ranker/<N>/model.savedmodel/      (+ model.py in the python flavour)
    recsys_item_index/<N>/index/ + model.py
    recsys_floor/1/model.py           the benchmark floor

Flavours: ``python`` (default; the only backend in the pip-installed Triton) runs every model in the
python backend. ``tensorflow`` writes native ``tensorflow_savedmodel`` configs for the query tower and
the ranker (GPU hosts running NVIDIA's Triton container, which ships the TF backend); the four-stage
``recsys`` model and the index stay python models either way.

Writing is split in two: :func:`write_version_folders` (and :func:`write_popularity_folder`) write
every model's ``<model>/<N>/`` COMPLETELY (its files, ``lineage.json``, its own ``config.pbtxt``) and
``<model>/config.pbtxt`` into a repository-shaped folder, with no staging or activation of their own
(publishing writes into its staging folder); :func:`write_model_versions` is that in a staging folder
beside the repository (:mod:`recsys.layout`), each version renamed into place, then activated. If
any model fails, nothing is half-written. Configs are Triton's own ``ModelConfig`` messages
(``tritonclient.grpc.model_config_pb2``) in protobuf text format; the ``recsys`` model's tensors are
those of :mod:`recsys.serving.schema`. This module runs
in the control plane: it needs no TensorFlow (the SavedModels' input/output schema comes from the
``.merlin/*.json`` files merlin-models writes beside them) and builds the FAISS index through the
Merlin interpreter when faiss is not importable here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Sequence

from recsys.errors import RecsysError
from recsys.layout import CONFIG_FILE, RunExports, TritonRepository
from recsys.serving import schema
from recsys.serving.schema import TensorSpec
from recsys.settings import Settings

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).parent / "models"
FOUR_STAGE, QUERY_TOWER, RANKER, ITEM_INDEX, FLOOR = (
    schema.MODEL, "recsys_query_tower", "recsys_ranker", "recsys_item_index", "recsys_floor",
)
PUBLISHED_MODELS = (QUERY_TOWER, RANKER, ITEM_INDEX, FOUR_STAGE)
"""The models a publish writes (in load order: the four-stage model last)."""
FLAVOURS = ("python", "tensorflow")
EXPORT_KEYS = ("query_tower", "item_embeddings", "dlrm")
_PB_TYPES = {"INT": "TYPE_INT64", "FLOAT": "TYPE_FP32"}
MAX_BATCH = 64
"""Largest batch of requests Triton's dynamic batcher hands the four-stage model (when enabled)."""


def batching_enabled(batch_delay_us: Optional[int]) -> bool:
    """Dynamic batching for a ``batch_delay_us`` setting: on for 0 or more, off for None or negative."""
    return batch_delay_us is not None and int(batch_delay_us) >= 0


class RepositoryError(RecsysError):
    """The exports or the repository are not what a model version needs."""


# --- inputs ---------------------------------------------------------------------------------------
def exports_from_run(run_dir: Path) -> dict[str, Path]:
    """The exports of a training run folder (docs/layouts.md section 4) by name."""
    run = RunExports(Path(run_dir))
    exports = {"query_tower": run.query_tower, "item_embeddings": run.item_embeddings, "dlrm": run.dlrm}
    _check_exports(exports)
    return exports


def pipeline_from_settings(
    settings: Settings,
    feature_manifest: Mapping[str, Any],
    *,
    mode: str = "models",
    ranker_weight: float = 1.0,
) -> dict[str, Any]:
    """The four-stage model's ``pipeline.json``: settings frozen at publish time + the feature version's columns.

    No Redis URL here (it may carry a password): the model reads it from the server's environment.
    ``ids``: the raw id kinds of the feature version (boost ids are parsed into the item id kind).
    ``mode``: ``models``, or ``popularity`` (no model beats the baseline yet: the popularity list for all).
    ``ranker_weight``: the scoring stage's blend of the ranker with retrieval's order
    (:mod:`recsys.serving.scoring`), as the champion's training run chose it. The history length is not a
    setting: :func:`write_model_versions` reads it from the query tower it publishes.
    ``live``: how the served model uses the live layer (events since the batch data): read at all (a
    version without ``live``, published before the live layer, does not); for a newcomer when the model
    has no history input, the newest ``recent_items`` live items form the session whose ``neighbours_k``
    nearest items answer them (recsys.serving.engine).
    """
    from recsys.data import ids
    from recsys.serving.ordering import OrderingRules, parse_boosts

    id_kinds = ids.IdKinds.from_dict(feature_manifest.get("ids"), "the feature version's manifest")
    columns = feature_manifest.get("columns", {})
    user_columns = [columns.get("user_id", "user_id"), *columns.get("user_categorical", []), *columns.get("user_continuous", [])]
    item_columns = [columns.get("item_id", "item_id"), *columns.get("item_categorical", []), *columns.get("item_continuous", [])]
    rules = OrderingRules(
        max_per_category=settings.max_per_category,
        boosts=parse_boosts(settings.boosts, id_kinds.item_id),
        exploration_temperature=settings.exploration_temperature,
        exploration_seed=settings.exploration_seed,
    )
    category = settings.category_column if settings.category_column in item_columns else None
    if settings.max_per_category and category is None:
        raise RepositoryError(
            f"max_per_category={settings.max_per_category} needs the category column "
            f"{settings.category_column!r} among the item features {item_columns} (RECSYS_CATEGORY_COLUMN)"
        )
    return {
        "mode": mode,
        "feature_version": feature_manifest.get("feature_version"),
        "data_version": feature_manifest.get("data_version"),
        "ids": id_kinds.to_dict(),
        "scoring": {"ranker_weight": float(ranker_weight)},
        "user_columns": user_columns,
        "item_columns": item_columns,
        "category_column": category,
        "candidates_k": settings.candidates_k,
        "default_k": settings.recommend_default_k,
        "max_k": settings.recommend_max_k,
        "faiss_index": settings.faiss_index,
        "instances": settings.triton_instances,
        # null in pipeline.json: batching off (also what versions written before the setting mean)
        "batch_delay_us": settings.triton_batch_delay_us if batching_enabled(settings.triton_batch_delay_us) else None,
        "ordering": rules.to_dict(),
        "live": {"recent_items": int(settings.live_recent_items), "neighbours_k": int(settings.live_neighbours_k)},
    }


def _check_exports(exports: Mapping[str, Path]) -> None:
    missing = [k for k in EXPORT_KEYS if k not in exports]
    if missing:
        raise RepositoryError(f"exports lack {missing} (need {list(EXPORT_KEYS)})")
    for key in ("query_tower", "dlrm"):
        path = Path(exports[key])
        if not (path / "saved_model.pb").is_file():
            raise RepositoryError(f"{path}: not a SavedModel (no saved_model.pb) for export {key!r}")
        for name in ("input_schema.json", "output_schema.json"):
            if not (path / ".merlin" / name).is_file():
                raise RepositoryError(f"{path / '.merlin' / name}: missing (merlin-models writes it beside the SavedModel)")
    if not Path(exports["item_embeddings"]).is_file():
        raise RepositoryError(f"{exports['item_embeddings']}: item embeddings file missing")


# --- config.pbtxt -------------------------------------------------------------------------------
# Configs are ModelConfig messages of Triton's own schema (tritonclient.grpc.model_config_pb2, in both
# runtimes), written and read with protobuf's text format: what Triton parses, field for field.
def model_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    backend: str = "python",
    instances: int = 1,
    version: Optional[int] = None,
    parameters: Optional[Mapping[str, str]] = None,
    batch_delay_us: Optional[int] = None,
):
    """A ``ModelConfig`` (write it with :func:`config_text`). ``backend``: ``python`` or ``tensorflow``
    (platform tensorflow_savedmodel).

    ``batch_delay_us`` 0 or more: dynamic batching (``max_batch_size`` > 0, so the tensors' dims
    exclude the batch dimension that clients then prepend), waiting up to that many microseconds for
    more requests. None or negative: no batching (``max_batch_size`` 0).
    """
    from tritonclient.grpc import model_config_pb2 as pb

    batched = batching_enabled(batch_delay_us)
    config = pb.ModelConfig(name=name, max_batch_size=MAX_BATCH if batched else 0)
    if backend == "tensorflow":
        config.platform = "tensorflow_savedmodel"
    else:
        config.backend = "python"
    for tensor in inputs:
        config.input.add(name=tensor.name, data_type=pb.DataType.Value(tensor.data_type), dims=tensor.dims,
                         optional=tensor.optional)
    for tensor in outputs:
        config.output.add(name=tensor.name, data_type=pb.DataType.Value(tensor.data_type), dims=tensor.dims)
    config.instance_group.add(count=int(instances), kind=pb.ModelInstanceGroup.KIND_CPU)
    if batched:
        config.dynamic_batching.max_queue_delay_microseconds = int(batch_delay_us)
    if version is not None:
        config.version_policy.specific.versions.append(int(version))
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = str(value)
    return config


def config_text(config) -> str:
    """A ``ModelConfig`` as ``config.pbtxt`` text."""
    from google.protobuf import text_format

    return text_format.MessageToString(config, use_short_repeated_primitives=True)


def parse_config(text: str, where: str = CONFIG_FILE):
    """``config.pbtxt`` text as a ``ModelConfig``; :class:`RepositoryError` naming ``where`` if it is not one."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"{where}: not a Triton model config ({exc})") from None


def read_config(path: Path):
    """The ``ModelConfig`` of a ``config.pbtxt`` file."""
    return parse_config(Path(path).read_text(), str(path))


def history_length_of(saved_model: Path) -> int:
    """The history length a merlin-models SavedModel takes (its ``history`` input's value count; 0: none)."""
    from recsys.features.history import HISTORY

    path = saved_model / ".merlin" / "input_schema.json"
    for feature in json.loads(path.read_text()).get("feature", []):
        if feature.get("name") == HISTORY:
            return int(feature.get("valueCount", {}).get("max") or 0)
    return 0


def _is_ragged(feature: Mapping[str, Any]) -> bool:
    extra = (feature.get("annotation", {}).get("extraMetadata") or [{}])[0]
    return bool(extra.get("is_ragged"))


def _schema_tensors(saved_model: Path, which: str) -> list[TensorSpec]:
    """Triton tensors of a merlin-models SavedModel's input or output schema (one row: dims [-1] or [-1, d]).

    A ragged list input (the history) is two tensors, as the SavedModel takes it: ``<name>__values`` and
    ``<name>__offsets`` (INT64, [-1]).
    """
    path = saved_model / ".merlin" / f"{which}_schema.json"
    tensors = []
    for feature in json.loads(path.read_text()).get("feature", []):
        kind = feature.get("type", "")
        if kind not in _PB_TYPES:
            raise RepositoryError(f"{path}: feature {feature.get('name')!r} has type {kind!r}; expected INT or FLOAT")
        if which == "input" and _is_ragged(feature):
            tensors += [TensorSpec(f"{feature['name']}__{part}", "TYPE_INT64", (-1,)) for part in ("values", "offsets")]
            continue
        width = feature.get("valueCount", {}).get("max")
        dims = (-1, int(width)) if width else ((-1, 1) if which == "output" else (-1,))
        tensors.append(TensorSpec(feature["name"], _PB_TYPES[kind], dims))
    if not tensors:
        raise RepositoryError(f"{path}: no features")
    return tensors


def _embedding_dim(saved_model: Path) -> int:
    path = saved_model / ".merlin" / "output_schema.json"
    features = json.loads(path.read_text()).get("feature", [])
    try:
        return int(features[0]["valueCount"]["max"])
    except (IndexError, KeyError, ValueError):
        raise RepositoryError(f"{path}: no embedding width (valueCount.max) in the query tower's output schema") from None


def four_stage_config(
    instances: int,
    version: Optional[int],
    batch_delay_us: Optional[int] = None,
    id_kinds: Optional[Mapping[str, str]] = None,
):
    """The ``recsys`` model's config: the contract of :mod:`recsys.serving.schema` (docs/serving.md);
    ``batch_delay_us``: see :func:`model_config`.

    Ids travel as text (BYTES) whatever their kind: one wire format. ``id_kinds`` (pipeline.json's
    ``ids``) become the ``user_id_kind`` / ``item_id_kind`` parameters, so a client of an integer
    deployment gives integers back (:func:`recsys.serving.client.served_contract`).
    """
    from recsys.data import ids

    kinds = ids.IdKinds.from_dict(id_kinds)
    parameters = {schema.USER_ID_KIND: kinds.user_id, schema.ITEM_ID_KIND: kinds.item_id}
    return model_config(
        FOUR_STAGE, schema.INPUTS, schema.OUTPUTS, instances=instances, version=version, parameters=parameters,
        batch_delay_us=batch_delay_us,
    )


def floor_config(instances: int = 1):
    """``recsys_floor``: the same id tensors as ``recsys`` (BYTES), so benchmark requests match."""
    echo = dataclasses.replace(schema.ITEM_IDS, dims=schema.USER_ID.dims)  # the user id, echoed
    user = dataclasses.replace(schema.USER_ID, optional=False)  # the floor always echoes a user id
    return model_config(FLOOR, [user], [echo], instances=instances)


# --- writing ------------------------------------------------------------------------------------
def write_version_folders(
    exports: Mapping[str, Path],
    repo_dir: Path,
    version: int,
    pipeline: Mapping[str, Any],
    lineage: Optional[Mapping[str, Any]] = None,
    flavour: str = "python",
    prior_slot: bool = False,
) -> list[str]:
    """Write version ``version`` of the four published models COMPLETELY into ``repo_dir``, a
    repository-shaped folder (a staging folder): each ``<model>/<version>/`` with its files,
    ``lineage.json`` and its own ``config.pbtxt``, plus ``<model>/config.pbtxt`` pointing at it.

    No staging and no activation of its own: the caller moves the version folders into the served
    repository (:func:`write_model_versions` does). Returns the model names, dependencies first
    (the order they load in). ``exports``: ``query_tower``, ``item_embeddings``, ``dlrm`` paths
    (:func:`exports_from_run`); ``pipeline``: :func:`pipeline_from_settings`; ``lineage``: written
    into each version (``created_at`` added when missing, ``models`` and ``model`` set). ``prior_slot``:
    the item vectors end with the popularity prior (:func:`recsys.serving.index.prior_slot_of` of the
    training run's metrics), recorded in the index's ``index.json``. If any model fails, the version
    folders this call wrote are removed again.
    """
    if flavour not in FLAVOURS:
        raise RepositoryError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    _check_exports(exports)
    repo_dir = Path(repo_dir)
    _check_new_version(repo_dir, PUBLISHED_MODELS, version)
    started = time.perf_counter()
    instances = int(pipeline.get("instances", 1))
    query_tower, dlrm = Path(exports["query_tower"]), Path(exports["dlrm"])
    # what the served models read as history is what they were trained with (their own schema)
    pipeline = {**pipeline, "history_length": max(history_length_of(query_tower), history_length_of(dlrm))}
    tf_native = flavour == "tensorflow"
    backend = "tensorflow" if tf_native else "python"
    configs = {}
    try:
        # The index is built once (the slow part) and copied to the two models that use it.
        index_dir = _version_dir(repo_dir, ITEM_INDEX, version)
        (index_dir / "index").mkdir()
        meta = _build_index(Path(exports["item_embeddings"]), index_dir / "index", str(pipeline.get("faiss_index", "auto")),
                            prior_slot)
        dim = _embedding_dim(query_tower)
        if meta["dim"] != dim:
            raise RepositoryError(
                f"{exports['item_embeddings']}: embeddings have {meta['dim']} dimensions but the query tower "
                f"{query_tower} outputs {dim}"
            )
        _copy_model_source(ITEM_INDEX, index_dir)
        query = TensorSpec("query", "TYPE_FP32", (1, dim))
        # the index answers in the recsys model's wire format (k, item ids as text, scores)
        configs[ITEM_INDEX] = model_config(ITEM_INDEX, [query, schema.K], [schema.ITEM_IDS, schema.SCORES], version=version)

        for model, source in ((QUERY_TOWER, query_tower), (RANKER, dlrm)):
            folder = _version_dir(repo_dir, model, version)
            shutil.copytree(source, folder / "model.savedmodel")
            if not tf_native:
                _copy_model_source(model, folder)
            configs[model] = model_config(
                model, _schema_tensors(source, "input"), _schema_tensors(source, "output"), backend=backend, version=version,
            )

        from recsys.serving.engine import INDEX_DIR, QUERY_TOWER_DIR, RANKER_DIR

        folder = _version_dir(repo_dir, FOUR_STAGE, version)
        shutil.copytree(query_tower, folder / QUERY_TOWER_DIR)
        shutil.copytree(dlrm, folder / RANKER_DIR)
        shutil.copytree(index_dir / "index", folder / INDEX_DIR)
        configs[FOUR_STAGE] = _four_stage_files(folder, version, pipeline)
        _finish_versions(repo_dir, version, {model: configs[model] for model in PUBLISHED_MODELS}, lineage)
    except BaseException:
        for model in PUBLISHED_MODELS:
            shutil.rmtree(repo_dir / model / str(version), ignore_errors=True)
        raise
    log.info(
        "wrote version %d of %s (%s flavour, %s index of %d items) in %.1fs",
        version, ", ".join(PUBLISHED_MODELS), flavour, meta["kind"], meta["items"], time.perf_counter() - started,
    )
    return list(PUBLISHED_MODELS)


def write_popularity_folder(
    repo_dir: Path, version: int, pipeline: Mapping[str, Any], lineage: Optional[Mapping[str, Any]] = None,
) -> list[str]:
    """:func:`write_version_folders` of the ``recsys`` model alone, in popularity mode: no query tower,
    ranker or index (no model beats the popularity baseline yet), the same request/response contract
    and filtering. Returns ``["recsys"]``."""
    from recsys.serving.engine import POPULARITY

    if pipeline.get("mode") != POPULARITY:
        raise RepositoryError(f"a popularity version needs pipeline mode {POPULARITY!r}, got {pipeline.get('mode')!r}")
    repo_dir = Path(repo_dir)
    _check_new_version(repo_dir, [FOUR_STAGE], version)
    try:
        folder = _version_dir(repo_dir, FOUR_STAGE, version)
        _finish_versions(repo_dir, version, {FOUR_STAGE: _four_stage_files(folder, version, pipeline)}, lineage)
    except BaseException:
        shutil.rmtree(repo_dir / FOUR_STAGE / str(version), ignore_errors=True)
        raise
    return [FOUR_STAGE]


def write_model_versions(
    exports: Mapping[str, Path],
    repo_dir: Path,
    version: int,
    pipeline: Mapping[str, Any],
    flavour: str = "python",
    lineage: Optional[Mapping[str, Any]] = None,
    activate: bool = True,
    prior_slot: bool = False,
) -> list[Path]:
    """Write version ``version`` of the four published models into ``repo_dir``; return the version folders.

    :func:`write_version_folders` into a staging folder beside the repository, then each version
    folder renamed into place, so nothing is half-written. ``activate``: also point each model's
    ``config.pbtxt`` at this version (the next load serves it); otherwise call
    :func:`activate_version` later. Refuses to overwrite an existing version. ``prior_slot``: see
    :func:`write_version_folders`.
    """
    return _write_staged(
        repo_dir, version, PUBLISHED_MODELS, activate,
        lambda staging: write_version_folders(exports, staging, version, pipeline, lineage, flavour, prior_slot),
    )


def write_popularity_version(repo_dir: Path, version: int, pipeline: Mapping[str, Any],
                             lineage: Optional[Mapping[str, Any]] = None, activate: bool = True) -> Path:
    """:func:`write_popularity_folder` staged and renamed into ``repo_dir`` (as :func:`write_model_versions`);
    returns the version folder."""
    written = _write_staged(
        repo_dir, version, [FOUR_STAGE], activate,
        lambda staging: write_popularity_folder(staging, version, pipeline, lineage),
    )
    return written[0]


def _write_staged(repo_dir: Path, version: int, models: Sequence[str], activate: bool, write) -> list[Path]:
    """``write(staging)`` into a fresh repository-shaped staging folder, then rename each written
    ``<model>/<version>/`` into ``repo_dir`` (all or none) and, if ``activate``, activate it."""
    repo_dir = Path(repo_dir)
    _check_new_version(repo_dir, models, version)
    repo_dir.mkdir(parents=True, exist_ok=True)
    # beside the repository: the same file system (a rename moves a version atomically), unseen by Triton
    staging = TritonRepository(repo_dir).staging_root / uuid.uuid4().hex[:8]
    staging.mkdir(parents=True)
    moved: list[Path] = []
    try:
        written = write(staging)
        _check_new_version(repo_dir, written, version)  # written meanwhile by another writer?
        for model in written:
            final = repo_dir / model / str(version)
            final.parent.mkdir(exist_ok=True)
            os.rename(staging / model / str(version), final)
            moved.append(final)
    except BaseException:
        for final in moved:
            shutil.rmtree(final, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # the last one out removes the staging root
            staging.parent.rmdir()
    if activate:
        for model in written:
            activate_version(repo_dir, model, version)
    return moved


def _check_new_version(repo_dir: Path, models: Sequence[str], version: int) -> None:
    if int(version) < 1:
        raise RepositoryError(f"Triton model versions start at 1, got {version}")
    for model in models:
        if (repo_dir / model / str(version)).exists():
            raise RepositoryError(f"{repo_dir / model / str(version)} already exists; versions are never overwritten")


def _version_dir(repo_dir: Path, model: str, version: int) -> Path:
    folder = repo_dir / model / str(version)
    folder.mkdir(parents=True)
    return folder


def _four_stage_files(folder: Path, version: int, pipeline: Mapping[str, Any]):
    """The ``recsys`` version's own files (pipeline.json, model.py); returns its config."""
    from recsys.serving.engine import PIPELINE_FILE

    (folder / PIPELINE_FILE).write_text(json.dumps(dict(pipeline), indent=2, sort_keys=True))
    _copy_model_source(FOUR_STAGE, folder)
    return four_stage_config(int(pipeline.get("instances", 1)), version, pipeline.get("batch_delay_us"), pipeline.get("ids"))


def _finish_versions(repo_dir: Path, version: int, configs: Mapping[str, Any], lineage: Optional[Mapping[str, Any]]) -> None:
    """Each model's ``<model>/config.pbtxt``, then :func:`seal_version` (the version's own copy of it and
    its ``lineage.json``); ``configs``: by model, dependencies first."""
    stamp = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(lineage or {}), "models": list(configs)}
    for model, config in configs.items():
        (repo_dir / model / CONFIG_FILE).write_text(config_text(config))
        seal_version(repo_dir, model, version, {**stamp, "model": model})


def activate_version(repo_dir: Path, model: str, version: int) -> Path:
    """Make ``version`` the one ``model`` serves at its next load (a rollback is this + a load).

    Copies that version's own ``config.pbtxt`` (its input/output contract and version policy) to the
    model folder, atomically.
    """
    source = Path(repo_dir) / model / str(version) / CONFIG_FILE
    if not source.is_file():
        raise RepositoryError(f"{source}: missing; is version {version} of {model} in the repository?")
    target = Path(repo_dir) / model / CONFIG_FILE
    _atomic_write(target, source.read_text())
    return target


def served_version(repo_dir: Path, model: str) -> Optional[int]:
    """The version ``model``'s ``config.pbtxt`` points at (None: no config or no specific policy)."""
    path = Path(repo_dir) / model / CONFIG_FILE
    if not path.exists():
        return None
    policy = read_config(path).version_policy
    if policy.WhichOneof("policy_choice") != "specific" or not policy.specific.versions:
        return None
    return int(policy.specific.versions[0])


def model_versions(repo_dir: Path, model: str) -> list[int]:
    """The complete version folders of ``model`` in the repository, ascending."""
    return TritonRepository(Path(repo_dir)).versions(model)


def write_floor_model(repo_dir: Path, instances: int = 1) -> Path:
    """Write ``recsys_floor`` version 1 (the benchmark floor); idempotent. Returns the model folder."""
    folder = Path(repo_dir) / FLOOR
    source = MODELS_DIR / FLOOR / "model.py"
    if not (folder / "1" / "model.py").exists():
        tmp = _staging(folder, 1)
        _copy_model_source(FLOOR, tmp)
        tmp.rename(folder / "1")
    elif (folder / "1" / "model.py").read_bytes() != source.read_bytes():
        # a floor written by an older release (e.g. INT64 ids) must match the config written below
        _atomic_write(folder / "1" / "model.py", source.read_text())
    _atomic_write(folder / CONFIG_FILE, config_text(floor_config(instances)))
    return folder


# --- helpers -------------------------------------------------------------------------------------
def _staging(model_dir: Path, version: int) -> Path:
    # Triton ignores non-numeric folders, so a staging folder is never taken for a version.
    tmp = model_dir / f".{version}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def _copy_model_source(model: str, version_dir: Path) -> None:
    source = MODELS_DIR / model / "model.py"
    if not source.is_file():
        raise RepositoryError(f"{source}: model source missing")
    shutil.copy2(source, version_dir / "model.py")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    tmp.replace(path)


def _build_index(embeddings: Path, out_dir: Path, kind: str, prior_slot: bool = False) -> dict:
    from recsys.serving.index import build_index

    return build_index(embeddings, out_dir, kind, prior_slot=prior_slot)


# --- what publishing writes and keeps ---------------------------------------------------------------
class RepositoryWriter(Protocol):
    """Writes one version of every Triton model from verified training exports, for publishing.

    ``exports``: the downloaded champion's folders (laid out like a training run,
    :class:`recsys.layout.RunExports`); ``staging``: an empty repository-shaped folder; ``lineage``: what
    publish records (feature version, champions, Airflow run, ...). Writes each ``<model>/config.pbtxt``
    and ``<model>/<version>/`` and returns the model names, dependencies first (the order they load in).
    A version the writer did not seal (:func:`seal_version`: its config copy and ``lineage.json``) is
    sealed by publish, once.
    """

    def __call__(self, exports: Path, staging: Path, version: int, settings: Settings, lineage: dict[str, Any]) -> list[str]: ...


def four_stage_writer(exports: Path, staging: Path, version: int, settings: Settings, lineage: dict[str, Any]) -> list[str]:
    """The default writer: the four published models (query tower, ranker, item index, recsys).

    Their ``pipeline.json`` freezes the settings and the feature version's columns; the index's
    ``index.json`` records whether the item vectors carry the prior slot (``lineage["prior_slot"]``,
    from the champion's run metrics: :attr:`recsys.serving.plan.PublishPlan.prior_slot`).
    """
    manifest = _features_manifest(settings, lineage)
    pipeline = pipeline_from_settings(settings, manifest, ranker_weight=float(lineage.get("ranker_weight", 1.0)))
    return write_version_folders(exports_from_run(exports), staging, version, pipeline, lineage,
                                 prior_slot=bool(lineage.get("prior_slot", False)))


def popularity_writer(exports: Path, staging: Path, version: int, settings: Settings, lineage: dict[str, Any]) -> list[str]:
    """While no model beats the popularity baseline: the ``recsys`` model alone, answering with the popularity
    list of the online version of ``lineage["feature_version"]``, filtered as always."""
    from recsys.serving.engine import POPULARITY

    pipeline = pipeline_from_settings(settings, _features_manifest(settings, lineage), mode=POPULARITY)
    return write_popularity_folder(staging, version, pipeline, lineage)


def _features_manifest(settings: Settings, lineage: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest of the feature version a publish serves (its columns and id kinds go into pipeline.json)."""
    from recsys.data.versioning import read_manifest
    from recsys.layout import FeatureVersion

    return read_manifest(FeatureVersion.of(settings, lineage["feature_version"]).path)


def seal_version(repo_dir: "Path | TritonRepository", model: str, version: int, lineage: Mapping[str, Any]) -> None:
    """Complete ``<model>/<version>/``: its own copy of ``<model>/config.pbtxt`` (what a rollback puts back),
    its ``lineage.json``, and last its seal ``checksums.json``: the size and sha256 of every file in it,
    which :func:`verified_version_dir` checks whenever Triton loads the version."""
    from recsys.data.versioning import sha256_file, write_json_atomic

    repo = repo_dir if isinstance(repo_dir, TritonRepository) else TritonRepository(Path(repo_dir))
    shutil.copy2(repo.config(model), repo.version_config(model, version))
    repo.lineage(model, version).write_text(json.dumps(dict(lineage), indent=2, sort_keys=True, default=str) + "\n")
    folder, seal = repo.version_dir(model, version), repo.seal(model, version)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != seal)
    write_json_atomic(seal, {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                             for p in files})


class AlteredVersionError(RepositoryError):
    """A file of a sealed model version differs from what was written (truncated, corrupted or missing)."""


def verify_version(folder: Path) -> None:
    """Check every file of a version folder against its seal (:func:`seal_version`); raise
    :class:`AlteredVersionError` naming the first file that is missing, has another size or another sha256.

    A version sealed before seals recorded checksums has none: it loads unchecked (nothing to compare).
    Files added since (``__pycache__`` of the python backend) are not the version's and are ignored.
    """
    from recsys.data.versioning import sha256_file
    from recsys.layout import CHECKSUMS_FILE

    folder = Path(folder)
    seal = folder / CHECKSUMS_FILE
    if not seal.is_file():
        return
    for rel, recorded in sorted(json.loads(seal.read_text()).items()):
        path = folder / rel
        what = None
        if not path.is_file():
            what = "missing"
        elif path.stat().st_size != recorded["size"]:
            what = f"{path.stat().st_size} bytes, sealed with {recorded['size']} (truncated or overwritten)"
        elif sha256_file(path) != recorded["sha256"]:
            what = "its sha256 differs from the seal's (corrupted)"
        if what:
            raise AlteredVersionError(
                f"{path}: {what}; this version was altered after it was written ({seal}); it is not loaded: "
                "publish again or roll back to another version"
            )


def verified_version_dir(args: Mapping[str, str]) -> Path:
    """The version folder a python-backend model is initialized from (Triton's ``args``), verified
    (:func:`verify_version`). Every published model finds its files through this one function, so
    no altered version serves, whether a publish, a rollback or a restarted Triton loads it: the
    error goes to Triton's log and, through the load request, to the publish or rollback."""
    folder = Path(args["model_repository"]) / args["model_version"]
    verify_version(folder)
    return folder


def activate_newest(repo: TritonRepository, model: str) -> Optional[int]:
    """Activate the newest version of ``model`` on disk (its own config); None (and no config) when none is left."""
    remaining = repo.versions(model)
    if not remaining:
        repo.config(model).unlink(missing_ok=True)
        return None
    activate_version(repo.path, model, remaining[-1])
    return remaining[-1]


def prune(repo: TritonRepository, models: Sequence[str], keep: int) -> list[str]:
    """Delete all but the newest ``keep`` version folders of each model; returns what was deleted."""
    deleted = []
    for model in models:
        versions = repo.versions(model)
        for old in versions[: max(0, len(versions) - max(1, keep))]:
            shutil.rmtree(repo.version_dir(model, old))
            deleted.append(f"{model}/{old}")
    if deleted:
        log.info("pruned old versions: %s", ", ".join(deleted))
    return deleted
