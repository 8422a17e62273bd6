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

Each version folder is written under a temporary name and renamed into place; if any model fails,
the versions this call already wrote are removed again, so nothing is half-written. This module runs
in the control plane: it needs no TensorFlow (the SavedModels' input/output schema comes from the
``.merlin/*.json`` files merlin-models writes beside them) and builds the FAISS index through the
Merlin interpreter when faiss is not importable here.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from recsys.errors import RecsysError
from recsys.settings import Settings

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).parent / "models"
FOUR_STAGE, QUERY_TOWER, RANKER, ITEM_INDEX, FLOOR = (
    "recsys", "recsys_query_tower", "recsys_ranker", "recsys_item_index", "recsys_floor",
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
    run_dir = Path(run_dir)
    exports = {
        "query_tower": run_dir / "retrieval" / "query_tower",
        "item_embeddings": run_dir / "retrieval" / "item_embeddings.parquet",
        "dlrm": run_dir / "ranking" / "dlrm",
    }
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
def _tensor(name: str, data_type: str, dims: Iterable[int], optional: bool = False) -> str:
    opt = " optional: true" if optional else ""
    return f'  {{ name: "{name}" data_type: {data_type} dims: [ {", ".join(str(d) for d in dims)} ]{opt} }}'


def model_config(
    name: str,
    inputs: list[str],
    outputs: list[str],
    *,
    backend: str = "python",
    instances: int = 1,
    version: Optional[int] = None,
    parameters: Optional[Mapping[str, str]] = None,
    batch_delay_us: Optional[int] = None,
) -> str:
    """A ``config.pbtxt``. ``backend``: ``python`` or ``tensorflow`` (platform tensorflow_savedmodel).

    ``batch_delay_us`` 0 or more: dynamic batching (``max_batch_size`` > 0, so the tensors' dims
    exclude the batch dimension that clients then prepend), waiting up to that many microseconds for
    more requests. None or negative: no batching (``max_batch_size: 0``).
    """
    batched = batching_enabled(batch_delay_us)
    lines = [f'name: "{name}"']
    lines.append('platform: "tensorflow_savedmodel"' if backend == "tensorflow" else 'backend: "python"')
    lines.append(f"max_batch_size: {MAX_BATCH if batched else 0}")
    lines.append("input [\n" + ",\n".join(inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(outputs) + "\n]")
    lines.append(f"instance_group [ {{ count: {int(instances)} kind: KIND_CPU }} ]")
    if batched:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {int(batch_delay_us)} }}")
    if version is not None:
        lines.append(f"version_policy: {{ specific: {{ versions: [ {int(version)} ] }} }}")
    for key, value in (parameters or {}).items():
        lines.append(f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


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


def _schema_tensors(saved_model: Path, which: str) -> list[str]:
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
            tensors += [_tensor(f"{feature['name']}__{part}", "TYPE_INT64", [-1]) for part in ("values", "offsets")]
            continue
        width = feature.get("valueCount", {}).get("max")
        dims = [-1, int(width)] if width else ([-1, 1] if which == "output" else [-1])
        tensors.append(_tensor(feature["name"], _PB_TYPES[kind], dims))
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
) -> str:
    """The ``recsys`` model's contract (docs/serving.md); ``batch_delay_us``: see :func:`model_config`.

    Ids travel as text (BYTES) whatever their kind: one wire format. ``id_kinds`` (pipeline.json's
    ``ids``) become the ``user_id_kind`` / ``item_id_kind`` parameters, so a client of an integer
    deployment gives integers back (:func:`recsys.serving.client.served_contract`).
    """
    from recsys.data import ids

    kinds = ids.IdKinds.from_dict(id_kinds)
    inputs = [
        _tensor("user_id", "TYPE_STRING", [1]),
        _tensor("k", "TYPE_INT32", [1], optional=True),
        _tensor("context", "TYPE_STRING", [1], optional=True),
    ]
    outputs = [
        _tensor("item_ids", "TYPE_STRING", [-1]),
        _tensor("scores", "TYPE_FP32", [-1]),
        _tensor("timings_ms", "TYPE_FP32", [4]),
    ]
    parameters = {"user_id_kind": kinds.user_id, "item_id_kind": kinds.item_id}
    return model_config(
        FOUR_STAGE, inputs, outputs, instances=instances, version=version, parameters=parameters,
        batch_delay_us=batch_delay_us,
    )


def floor_config(instances: int = 1) -> str:
    """``recsys_floor``: the same id tensors as ``recsys`` (BYTES), so benchmark requests match."""
    return model_config(
        FLOOR, [_tensor("user_id", "TYPE_STRING", [1])], [_tensor("item_ids", "TYPE_STRING", [1])], instances=instances
    )


# --- writing ------------------------------------------------------------------------------------
def write_model_versions(
    exports: Mapping[str, Path],
    repo_dir: Path,
    version: int,
    pipeline: Mapping[str, Any],
    flavour: str = "python",
    lineage: Optional[Mapping[str, Any]] = None,
    activate: bool = True,
) -> list[Path]:
    """Write version ``version`` of the four published models into ``repo_dir``; return the version folders.

    ``exports``: ``query_tower``, ``item_embeddings``, ``dlrm`` paths (:func:`exports_from_run`);
    ``pipeline``: :func:`pipeline_from_settings`; ``lineage``: written as ``lineage.json`` into each
    version (``created_at`` added when missing). ``activate``: also point each model's
    ``config.pbtxt`` at this version (the next load serves it); otherwise call
    :func:`activate_version` later. Refuses to overwrite an existing version.
    """
    if flavour not in FLAVOURS:
        raise RepositoryError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    if int(version) < 1:
        raise RepositoryError(f"Triton model versions start at 1, got {version}")
    _check_exports(exports)
    repo_dir = Path(repo_dir)
    for model in PUBLISHED_MODELS:
        if (repo_dir / model / str(version)).exists():
            raise RepositoryError(f"{repo_dir / model / str(version)} already exists; versions are never overwritten")
    started = time.perf_counter()
    lineage = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(lineage or {})}
    instances = int(pipeline.get("instances", 1))
    query_tower, dlrm = Path(exports["query_tower"]), Path(exports["dlrm"])
    # what the served models read as history is what they were trained with (their own schema)
    pipeline = {**pipeline, "history_length": max(history_length_of(query_tower), history_length_of(dlrm))}
    tf_native = flavour == "tensorflow"
    backend = "tensorflow" if tf_native else "python"

    written: list[Path] = []
    staged: list[tuple[Path, Path]] = []
    try:
        # The index is built once (the slow part) and copied to the two models that use it.
        index_tmp = _staging(repo_dir / ITEM_INDEX, version)
        (index_tmp / "index").mkdir(parents=True)
        meta = _build_index(Path(exports["item_embeddings"]), index_tmp / "index", str(pipeline.get("faiss_index", "auto")))
        staged.append((index_tmp, repo_dir / ITEM_INDEX / str(version)))
        dim = _embedding_dim(query_tower)
        if meta["dim"] != dim:
            raise RepositoryError(
                f"{exports['item_embeddings']}: embeddings have {meta['dim']} dimensions but the query tower "
                f"{query_tower} outputs {dim}"
            )
        _copy_model_source(ITEM_INDEX, index_tmp)
        _write_version_config(
            index_tmp,
            model_config(
                ITEM_INDEX,
                [_tensor("query", "TYPE_FP32", [1, dim]), _tensor("k", "TYPE_INT32", [1], optional=True)],
                [_tensor("item_ids", "TYPE_STRING", [-1]), _tensor("scores", "TYPE_FP32", [-1])],
                version=version,
            ),
        )

        for model, source in ((QUERY_TOWER, query_tower), (RANKER, dlrm)):
            tmp = _staging(repo_dir / model, version)
            staged.append((tmp, repo_dir / model / str(version)))
            shutil.copytree(source, tmp / "model.savedmodel")
            if not tf_native:
                _copy_model_source(model, tmp)
            _write_version_config(
                tmp,
                model_config(
                    model, _schema_tensors(source, "input"), _schema_tensors(source, "output"),
                    backend=backend, version=version,
                ),
            )

        tmp = _staging(repo_dir / FOUR_STAGE, version)
        staged.append((tmp, repo_dir / FOUR_STAGE / str(version)))
        from recsys.serving.engine import INDEX_DIR, PIPELINE_FILE, QUERY_TOWER_DIR, RANKER_DIR

        shutil.copytree(query_tower, tmp / QUERY_TOWER_DIR)
        shutil.copytree(dlrm, tmp / RANKER_DIR)
        shutil.copytree(index_tmp / "index", tmp / INDEX_DIR)
        (tmp / PIPELINE_FILE).write_text(json.dumps(dict(pipeline), indent=2, sort_keys=True))
        _copy_model_source(FOUR_STAGE, tmp)
        _write_version_config(tmp, four_stage_config(instances, version, pipeline.get("batch_delay_us"), pipeline.get("ids")))

        for tmp, _final in staged:
            (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
        for tmp, final in staged:
            tmp.rename(final)
            written.append(final)
    except BaseException:
        for tmp, _final in staged:
            shutil.rmtree(tmp, ignore_errors=True)
        for final in written:
            shutil.rmtree(final, ignore_errors=True)
        raise
    if activate:
        for model in PUBLISHED_MODELS:
            activate_version(repo_dir, model, version)
    log.info(
        "wrote version %d of %s (%s flavour, %s index of %d items) in %.1fs",
        version, ", ".join(PUBLISHED_MODELS), flavour, meta["kind"], meta["items"], time.perf_counter() - started,
    )
    return written


def write_popularity_version(repo_dir: Path, version: int, pipeline: Mapping[str, Any],
                             lineage: Optional[Mapping[str, Any]] = None, activate: bool = True) -> Path:
    """Write version ``version`` of the ``recsys`` model alone, in popularity mode: no query tower, ranker or
    index (no model beats the popularity baseline yet), the same request/response contract and filtering."""
    from recsys.serving.engine import PIPELINE_FILE, POPULARITY

    if pipeline.get("mode") != POPULARITY:
        raise RepositoryError(f"a popularity version needs pipeline mode {POPULARITY!r}, got {pipeline.get('mode')!r}")
    final = Path(repo_dir) / FOUR_STAGE / str(version)
    if final.exists():
        raise RepositoryError(f"{final} already exists; versions are never overwritten")
    tmp = _staging(Path(repo_dir) / FOUR_STAGE, version)
    try:
        (tmp / PIPELINE_FILE).write_text(json.dumps(dict(pipeline), indent=2, sort_keys=True))
        _copy_model_source(FOUR_STAGE, tmp)
        _write_version_config(tmp, four_stage_config(int(pipeline.get("instances", 1)), version,
                                                     pipeline.get("batch_delay_us"), pipeline.get("ids")))
        stamp = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(lineage or {})}
        (tmp / "lineage.json").write_text(json.dumps(stamp, indent=2, sort_keys=True, default=str))
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if activate:
        activate_version(repo_dir, FOUR_STAGE, version)
    return final


def activate_version(repo_dir: Path, model: str, version: int) -> Path:
    """Make ``version`` the one ``model`` serves at its next load (a rollback is this + a load).

    Copies that version's own ``config.pbtxt`` (its input/output contract and version policy) to the
    model folder, atomically.
    """
    source = Path(repo_dir) / model / str(version) / "config.pbtxt"
    if not source.is_file():
        raise RepositoryError(f"{source}: missing; is version {version} of {model} in the repository?")
    target = Path(repo_dir) / model / "config.pbtxt"
    _atomic_write(target, source.read_text())
    return target


def served_version(repo_dir: Path, model: str) -> Optional[int]:
    """The version ``model``'s ``config.pbtxt`` points at (None: no config or no specific policy)."""
    import re

    path = Path(repo_dir) / model / "config.pbtxt"
    if not path.exists():
        return None
    match = re.search(r"specific:\s*{\s*versions:\s*\[\s*(\d+)", path.read_text())
    return int(match.group(1)) if match else None


def model_versions(repo_dir: Path, model: str) -> list[int]:
    """The complete version folders of ``model`` in the repository, ascending."""
    folder = Path(repo_dir) / model
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


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
    _atomic_write(folder / "config.pbtxt", floor_config(instances))
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


def _write_version_config(version_dir: Path, text: str) -> None:
    (version_dir / "config.pbtxt").write_text(text)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    tmp.replace(path)


def _build_index(embeddings: Path, out_dir: Path, kind: str) -> dict:
    from recsys.serving.index import build_index

    return build_index(embeddings, out_dir, kind)
