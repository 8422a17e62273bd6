"""Publishing: the MLflow champions become version N+1 of every model in the Triton repository.

One publish, in order (nothing the running server reads changes before step 5):

1. resolve the ``champion`` version of each registered model (retrieval, ranking) in MLflow;
   they must come from the same feature version (their encoded ids must agree);
2. no-op if the served version already holds exactly these champions (unless ``force``);
3. download their artifacts into a staging folder and verify them: the expected files exist, every
   file has the size MLflow lists, and if the run logged a ``checksums.json`` ({path: sha256}),
   every listed file matches it;
4. pick N+1 (never reusing a number, even one of a failed attempt) and let the repository writer
   write every model's version COMPLETELY in staging, with a ``lineage.json`` in each version;
5. move each ``<model>/<N+1>/`` into the repository (one rename each) and its ``config.pbtxt``
   (atomic replace; a copy stays inside the version folder for rollback);
6. pin the champions' feature version in the online store (before anything loads: the new models
   read that feature version's rows, and garbage collection must keep them), load every model
   through Triton's repository API (explicit model control), dependencies first, then smoke-test a
   real request;
7. record lineage both ways: ``<repo>/publish_history.jsonl`` and tags on the MLflow model versions
   (``triton.version``, ``triton.published_at``, ``airflow.run``); release the pin of the feature
   version served before (only now: until here the old models served and read it); prune old versions.

Served models read the online store pinned to their own feature version (``pipeline.json``), so a
refresh to a newer feature version (the ETL's, long before a model trained on it is published, if
ever) never changes what they read. Pins are owned by publishing: their reason starts with
``"triton "`` and a successful publish or rollback releases every such pin but the served one.

On any failure in 5-6 the new folders are removed, the previous configs restored and every model
reloaded, so the previous version keeps serving (Triton 2.51 keeps the old version of a model
whose new version fails to load; a model whose new version did load is reloaded from the
previous folder), and :class:`PublishError` says what failed and what serves now.

Which version a model serves is what its ``config.pbtxt`` says: the serving package's writer pins
it (``version_policy specific [N]``, a copy of each version's config stays in its folder), and a
model without a policy serves its newest folder. Older folders stay on disk (a few, see
``triton_keep_versions``) for :func:`rollback`, which moves the newer versions aside, puts the older
version's config back and reloads.

    from recsys.serving.publish import publish, rollback, read_history
    publish(airflow_run="recsys_publish/manual__2026-01-01")   # PublishResult(published, version, ...)
    rollback(reason="CTR dropped")                              # serve the version before again
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol

from recsys.errors import RecsysError
from recsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

LINEAGE_FILE = "lineage.json"
HISTORY_FILE = "publish_history.jsonl"
CONFIG_FILE = "config.pbtxt"
CHECKSUMS_FILE = "checksums.json"
"""Optional run artifact ``{relative path: sha256}`` that a training run may log; verified when present."""

# What each champion's artifact folder must hold (docs/layouts.md, section 4).
EXPECTED_FILES: dict[str, tuple[str, ...]] = {
    "retrieval": ("query_tower/saved_model.pb", "item_embeddings.parquet"),
    "ranking": ("dlrm/saved_model.pb",),
}

# Tags written on the MLflow model versions that a Triton version serves.
TAG_TRITON_VERSION = "triton.version"
TAG_TRITON_PUBLISHED_AT = "triton.published_at"
TAG_TRITON_REPOSITORY = "triton.repository"
TAG_AIRFLOW_RUN = "airflow.run"
TAG_TRITON_ROLLED_BACK_AT = "triton.rolled_back_at"


class PublishError(RecsysError):
    """Publishing or rolling back failed; the message says what failed and what serves now."""


class NoChampionError(PublishError):
    """No registered model has a champion yet (none has beaten the popularity baseline)."""


class ArtifactError(PublishError):
    """A champion's artifacts are missing files or do not match their recorded size / checksum."""


# --- champions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Champion:
    """The ``champion`` version of one registered model."""

    role: str  # "retrieval" | "ranking": also the artifact folder inside the run
    name: str
    version: str
    run_id: str
    source: str
    feature_version: str
    data_version: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def resolve_champions(settings: Optional[Settings] = None, mlflow_client=None) -> dict[str, Champion]:
    """The champion of each registered model, by role; raises :class:`PublishError` if one is missing
    or if the two were trained on different feature versions (they could not be served together)."""
    from recsys.tracking.registry import CHAMPION, alias_version, model_specs
    from recsys.tracking.runs import TAG_DATA_VERSION, TAG_FEATURE_VERSION, client

    s = settings or get_settings()
    c = mlflow_client or client(s.mlflow_uri)
    found: dict[str, Champion] = {}
    specs = model_specs(s)
    aliases = {spec.name: alias_version(c, spec.name, CHAMPION) for spec in specs}
    if all(mv is None for mv in aliases.values()):
        raise NoChampionError(f"no model has a '{CHAMPION}' version in MLflow ({s.mlflow_uri}): none has beaten the "
                              "popularity baseline yet (train one; until then serving answers with the popularity list)")
    for spec in specs:
        mv = aliases[spec.name]
        if mv is None:
            raise PublishError(f"model {spec.name!r} has no '{CHAMPION}' version in MLflow ({s.mlflow_uri}): train first")
        tags = dict(mv.tags or {})
        if not tags.get(TAG_FEATURE_VERSION):
            tags.update({k: v for k, v in c.get_run(mv.run_id).data.tags.items() if k not in tags or not tags[k]})
        found[spec.artifact_path] = Champion(
            role=spec.artifact_path,
            name=spec.name,
            version=str(mv.version),
            run_id=mv.run_id,
            source=mv.source,
            feature_version=tags.get(TAG_FEATURE_VERSION, ""),
            data_version=tags.get(TAG_DATA_VERSION, ""),
        )
    feature_versions = {ch.feature_version for ch in found.values()}
    if len(feature_versions) != 1 or "" in feature_versions:
        detail = ", ".join(f"{ch.name} v{ch.version}: {ch.feature_version or '(none)'}" for ch in found.values())
        raise PublishError(
            f"the champions were not trained on one feature version ({detail}); their encoded ids would not "
            "agree. Train both on the same feature version (one recsys_train run) and publish again."
        )
    return found


def champions_key(champions: dict[str, Champion]) -> dict[str, str]:
    """``{model name: version}``: what identifies a published set (for the no-op check)."""
    return {ch.name: ch.version for ch in champions.values()}


# --- artifacts -------------------------------------------------------------------------------
def _listing(c, run_id: str, path: str) -> dict[str, int]:
    """``{path: size}`` of every file under ``path`` in a run's artifacts (recursive)."""
    files: dict[str, int] = {}
    for info in c.list_artifacts(run_id, path):
        if info.is_dir:
            files.update(_listing(c, run_id, info.path))
        else:
            files[info.path] = int(info.file_size or 0)
    return files


def download_champions(champions: dict[str, Champion], dst: Path, settings: Optional[Settings] = None, mlflow_client=None) -> dict[str, str]:
    """Download each champion's artifact folder to ``dst/<role>/`` and verify it; returns ``{path: sha256}``.

    Also downloads the retrieval run's ``workflows/`` (the fitted NVTabular workflows) when it has one.
    Raises :class:`ArtifactError` naming the file when anything is missing, short or altered.
    """
    from recsys.tracking.runs import client

    s = settings or get_settings()
    c = mlflow_client or client(s.mlflow_uri)
    dst = Path(dst)
    expected_sizes: dict[str, int] = {}
    checksums: dict[str, str] = {}
    for role, ch in champions.items():
        listing = _listing(c, ch.run_id, role)
        if not listing:
            raise ArtifactError(f"{ch.name} v{ch.version}: run {ch.run_id} has no artifacts under {role!r}")
        folders = [role]
        root_names = {info.path for info in c.list_artifacts(ch.run_id)}
        if role == "retrieval" and "workflows" in root_names:
            listing.update(_listing(c, ch.run_id, "workflows"))
            folders.append("workflows")
        expected_sizes.update(listing)
        if CHECKSUMS_FILE in root_names:
            recorded = json.loads(Path(c.download_artifacts(ch.run_id, CHECKSUMS_FILE, str(dst / ".checksums" / ch.run_id))).read_text())
            checksums.update({p: h for p, h in recorded.items() if p.split("/", 1)[0] in folders})
        for folder in folders:
            log.info("downloading %s v%s artifacts %r from run %s", ch.name, ch.version, folder, ch.run_id)
            c.download_artifacts(ch.run_id, folder, str(dst))
    shutil.rmtree(dst / ".checksums", ignore_errors=True)
    return verify_exports(dst, expected_sizes, checksums)


def verify_exports(root: Path, expected_sizes: dict[str, int], checksums: dict[str, str]) -> dict[str, str]:
    """Check downloaded exports before anything loads them; returns ``{path: sha256}`` of every file.

    ``expected_sizes``: ``{relative path: bytes}`` as MLflow lists them; ``checksums``: ``{relative path:
    sha256}`` from the run's ``checksums.json`` (may be empty).
    """
    from recsys.data.versioning import sha256_file

    root = Path(root)
    for role, names in EXPECTED_FILES.items():
        if not (root / role).exists():
            continue
        for name in names:
            if not (root / role / name).is_file():
                raise ArtifactError(f"{root / role}: the {role} export has no {name!r} (expected {list(names)})")
    for rel, size in sorted(expected_sizes.items()):
        path = root / rel
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in MLflow but not downloaded")
        if path.stat().st_size != size:
            raise ArtifactError(f"{path}: {path.stat().st_size} bytes downloaded, MLflow lists {size}")
    digests = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    for rel, digest in sorted(checksums.items()):
        if rel not in digests:
            raise ArtifactError(f"{root / rel}: listed in {CHECKSUMS_FILE} but missing")
        if digests[rel] != digest:
            raise ArtifactError(f"{root / rel}: sha256 {digests[rel][:12]}... does not match {CHECKSUMS_FILE}'s {digest[:12]}...")
    log.info("verified %d artifact files (%d against %s)", len(digests), len(checksums), CHECKSUMS_FILE)
    return digests


# --- the online store -----------------------------------------------------------------------
PIN_PREFIX = "triton "
"""Reason prefix of the online-store pins publishing owns (``"triton v4 serving"``)."""


def ensure_online_store(feature_version: str, data_version: str = "", settings: Optional[Settings] = None) -> dict[str, Any]:
    """Make the online store hold a version of ``feature_version`` (the champions'), refreshing if needed.

    The models read their features from Redis pinned to the feature version they were trained on
    (its encoded ids), so it must be there before they load. A refresh here also makes it current;
    that no longer disturbs the served models, which read their own pinned feature version.
    Returns ``{"refreshed", "online_version", "feature_version"}``.
    """
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.online.refresh import refresh_online_store

    s = settings or get_settings()
    store = RedisOnlineStore.from_settings(s)
    try:
        held = store.current(feature_version=feature_version)
        current = store.current()
    finally:
        store.client.close()
    if held is not None:
        log.info("online store version %s holds feature version %s", held.version, feature_version)
        return {"refreshed": False, "online_version": held.version, "feature_version": feature_version}
    features_dir = s.features_root / feature_version
    if not (features_dir / "manifest.json").is_file():
        raise PublishError(
            f"the champions were trained on feature version {feature_version!r}, the online store holds "
            f"{current.feature_version if current else 'nothing'}, and {features_dir} (to refresh it from) does not exist"
        )
    data_dir = s.data_root / data_version if data_version and (s.data_root / data_version).is_dir() else None
    log.info("online store holds no version of %s (current: %s): refreshing it",
             feature_version, current.feature_version if current else "nothing")
    result = refresh_online_store(str(features_dir), str(data_dir) if data_dir else None, settings=s)
    return {"refreshed": True, "online_version": result["version"], "feature_version": feature_version}


def pin_feature_version(s: Settings, feature_version: str, reason: str) -> Optional[str]:
    """Pin ``feature_version`` in the online store; returns the reason it was pinned with before (None: was not).

    Raises :class:`PublishError` when the store cannot be reached (nothing may load unpinned).
    """
    from recsys.online.redis_store import RedisOnlineStore

    store = RedisOnlineStore.from_settings(s)
    try:
        before = store.pins().get(feature_version)
        store.pin(feature_version, reason)
        if store.current(feature_version=feature_version) is None:
            log.warning("pinned feature version %s, but the online store holds no version of it: the models "
                        "cannot read their features (run `recsys online refresh`)", feature_version)
    except Exception as exc:
        raise PublishError(f"cannot pin feature version {feature_version} in the online store: {_error_text(exc)}") from exc
    finally:
        store.client.close()
    log.info("online store: feature version %s pinned (%s)", feature_version, reason)
    return before


def restore_pin(s: Settings, feature_version: str, before: Optional[str]) -> None:
    """Undo :func:`pin_feature_version` after a failed publish: unpin, or put the earlier reason back."""
    from recsys.online.redis_store import RedisOnlineStore

    store = RedisOnlineStore.from_settings(s)
    try:
        if before is None:
            store.unpin(feature_version)
        else:
            store.pin(feature_version, before)
    except Exception as exc:  # the publish already failed; an extra pin only delays garbage collection
        log.error("could not restore the online-store pin of %s: %s", feature_version, _error_text(exc))
    finally:
        store.client.close()


def release_other_pins(s: Settings, served_feature_version: str) -> list[str]:
    """Unpin every feature version publishing pinned, but the served one; returns the unpinned ones.

    Called once the served version answers: the models of other feature versions are gone.
    """
    from recsys.online.redis_store import RedisOnlineStore

    store = RedisOnlineStore.from_settings(s)
    try:
        released = [fv for fv, reason in store.pins().items() if reason.startswith(PIN_PREFIX) and fv != served_feature_version]
        for fv in released:
            store.unpin(fv)
    finally:
        store.client.close()
    if released:
        log.info("online store: released the pins of %s (no served model reads them any more)", released)
    return released


# --- the repository -------------------------------------------------------------------------
class RepositoryWriter(Protocol):
    """Writes one version of every Triton model from verified training exports.

    ``exports``: the downloaded champions' folders (``retrieval/``, ``ranking/``, ``workflows/``, laid
    out like a training run, docs/layouts.md section 4); ``staging``: an empty repository-shaped
    folder; ``lineage``: what publish records (feature version, champions, Airflow run, ...).
    Writes ``staging/<model>/config.pbtxt`` and ``staging/<model>/<version>/...`` for each model and
    returns the model names, dependencies first (the order they are loaded in).
    """

    def __call__(self, exports: Path, staging: Path, version: int, settings: Settings, lineage: dict[str, Any]) -> list[str]: ...


def four_stage_writer(exports: Path, staging: Path, version: int, settings: Settings, lineage: dict[str, Any]) -> list[str]:
    """The default writer: the serving package's four published models (query tower, ranker, item index, recsys).

    Their ``pipeline.json`` freezes the settings and the feature version's columns (read from
    ``<features_root>/<feature_version>/manifest.json``).
    """
    from recsys.data.versioning import read_manifest
    from recsys.serving.repository import PUBLISHED_MODELS, exports_from_run, pipeline_from_settings, write_model_versions

    manifest = read_manifest(settings.features_root / lineage["feature_version"])
    pipeline = pipeline_from_settings(settings, manifest, ranker_weight=float(lineage.get("ranker_weight", 1.0)))
    write_model_versions(exports_from_run(exports), staging, version, pipeline, lineage=lineage)
    return list(PUBLISHED_MODELS)


def popularity_writer(exports: Path, staging: Path, version: int, settings: Settings, lineage: dict[str, Any]) -> list[str]:
    """While no model beats the popularity baseline: the ``recsys`` model alone, answering with the popularity
    list of the online version of ``lineage["feature_version"]``, filtered as always."""
    from recsys.data.versioning import read_manifest
    from recsys.serving.engine import POPULARITY
    from recsys.serving.repository import FOUR_STAGE, pipeline_from_settings, write_popularity_version

    manifest = read_manifest(settings.features_root / lineage["feature_version"])
    write_popularity_version(staging, version, pipeline_from_settings(settings, manifest, mode=POPULARITY), lineage)
    return [FOUR_STAGE]


POPULARITY_REASON = "no model beats the popularity baseline yet: serving the popularity list"


def popularity_plan(s: Settings) -> tuple[str, str]:
    """(feature version, data version) the popularity list is served from: the newest feature version."""
    from recsys.data.versioning import latest_version

    newest = latest_version(s.features_root)
    if newest is None:
        raise PublishError(f"nothing to serve: no champion in MLflow and no feature version under {s.features_root}")
    return newest.version, str(newest.manifest.get("data_version", ""))


SmokeTest = Callable[[Settings, dict[str, int], dict[str, Any]], dict[str, Any]]
"""``(settings, {model: version}, lineage) -> details``; raises if the served models misbehave."""


def model_versions(repository: Path, model: str) -> list[int]:
    """The version folders of ``model`` on disk, ascending."""
    from recsys.serving.repository import model_versions as versions_on_disk

    return versions_on_disk(Path(repository), model)


def read_history(repository: Path) -> list[dict[str, Any]]:
    """Every entry of ``publish_history.jsonl``, oldest first."""
    path = Path(repository) / HISTORY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _append_history(repository: Path, entry: dict[str, Any]) -> None:
    # One short line with O_APPEND: readers see whole lines.
    line = json.dumps(entry, sort_keys=True, default=str) + "\n"
    with open(Path(repository) / HISTORY_FILE, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def served(repository: Path) -> Optional[dict[str, Any]]:
    """The history entry of what serves now (the last successful publish or rollback), or None."""
    for entry in reversed(read_history(repository)):
        if entry.get("status") == "serving":
            return entry
    return None


def _next_version(repository: Path, models: list[str]) -> int:
    numbers = [v for m in models for v in model_versions(repository, m)]
    numbers += [int(e["version"]) for e in read_history(repository) if "version" in e]
    return max(numbers, default=0) + 1


@contextlib.contextmanager
def _publish_lock(repository: Path) -> Iterator[None]:
    """One publish / rollback at a time per repository (a second one waits)."""
    lock_path = Path(repository).parent / f".{Path(repository).name}.publish.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _staging_root(repository: Path) -> Path:
    # A sibling of the repository: same file system (renames are atomic), invisible to Triton.
    return Path(repository).parent / f".{Path(repository).name}.staging"


# --- Triton ----------------------------------------------------------------------------------
def triton_client(settings: Optional[Settings] = None, url: Optional[str] = None):
    """An HTTP client of Triton (model control, health, inference)."""
    import urllib.parse

    import tritonclient.http as httpclient

    base = url or (settings or get_settings()).triton_http
    parts = urllib.parse.urlsplit(base if "://" in base else f"http://{base}")
    return httpclient.InferenceServerClient(parts.netloc, ssl=parts.scheme == "https", network_timeout=120.0)


def _ready(s: Settings, model: str, version: Optional[int] = None) -> bool:
    from recsys.serving.control import model_ready

    try:
        return model_ready(s, model, version)
    except Exception:  # Triton not answering at all: not ready
        return False


def _error_text(exc: BaseException) -> str:
    text = getattr(exc, "message", None)
    text = text() if callable(text) else (text or str(exc))
    return " ".join(str(text).split())[:600]


def default_smoke_test(s: Settings, versions: dict[str, int], lineage: dict[str, Any]) -> dict[str, Any]:
    """Every model READY at its new version, and one real ``recsys`` request answers with items."""
    not_ready = [f"{m} v{v}" for m, v in versions.items() if not _ready(s, m, v)]
    if not_ready:
        raise PublishError(f"not READY after loading: {', '.join(not_ready)}")
    details: dict[str, Any] = {"ready": sorted(versions)}
    if "recsys" in versions:
        import numpy as np
        import tritonclient.http as httpclient

        from recsys.serving.client import recommend_inputs, recommendation_arrays, served_contract

        user_id = lineage.get("smoke_user_id", 0)  # a raw id: int or str
        triton = triton_client(s)
        try:
            # The request follows the config just loaded (dynamic batching: [1, 1]; its id kinds).
            contract = served_contract(triton, "recsys")
            inputs = recommend_inputs(httpclient, user_id, 5, contract=contract)
            result = triton.infer("recsys", inputs, model_version=str(versions["recsys"]))
        finally:
            triton.close()
        items, scores = recommendation_arrays(result, contract)
        if items is None or len(items) == 0 or scores is None or not np.isfinite(scores).all():
            raise PublishError(f"smoke request to recsys v{versions['recsys']} (user {user_id!r}) answered no usable items: {items}, {scores}")
        details["recsys"] = {"user_id": user_id, "item_ids": items.tolist()}
    return details


# --- publish ---------------------------------------------------------------------------------
@dataclass
class PublishResult:
    published: bool
    """False: nothing changed (already serving these champions)."""
    version: int
    """The Triton version serving afterwards."""
    models: list[str] = field(default_factory=list)
    champions: dict[str, str] = field(default_factory=dict)
    feature_version: str = ""
    reason: str = ""
    smoke: dict[str, Any] = field(default_factory=dict)
    mode: str = "models"
    """``models``, or ``popularity`` while no model beats the popularity baseline."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def publish(
    *,
    force: bool = False,
    airflow_run: str = "",
    writer: Optional[RepositoryWriter] = None,
    smoke_test: Optional[SmokeTest] = None,
    settings: Optional[Settings] = None,
    smoke_user_id: "Optional[int | str]" = None,
) -> PublishResult:
    """Publish the MLflow champions as Triton version N+1 (see the module docstring for the steps).

    ``force``: publish even when the served version already holds these champions.
    ``airflow_run``: ``"<dag_id>/<run_id>"`` recorded in the lineage.
    ``smoke_user_id``: raw user id of the ``recsys`` smoke request (default: the first user of the
    champions' feature version, else 0, an unknown user answered from popularity).
    Raises :class:`PublishError` after restoring the previous version when anything fails.
    """
    s = settings or get_settings()
    repository = s.triton_repo
    repository.mkdir(parents=True, exist_ok=True)
    try:
        champions = resolve_champions(s)
        feature_version, data_version = champions["retrieval"].feature_version, champions["retrieval"].data_version
        mode = "models"
    except NoChampionError as exc:
        log.info("%s", exc)
        champions, mode = {}, "popularity"
        feature_version, data_version = popularity_plan(s)
        writer = writer or popularity_writer
    key = champions_key(champions)
    smoke_test = smoke_test or default_smoke_test

    with _publish_lock(repository):
        current = served(repository)
        same = current and current.get("champions") == key and current.get("mode", "models") == mode
        if mode == "popularity" and same:  # the popularity list of another feature version is another version
            same = current.get("feature_version") == feature_version
        if same and not force:
            versions = {m: int(current["version"]) for m in current["models"]}
            if all(_ready(s, m, v) for m, v in versions.items()):
                log.info("Triton version %s already serves champions %s: nothing to publish", current["version"], key)
                if current.get("feature_version"):  # pins made before pinning existed, or lost with Redis
                    pin_feature_version(s, current["feature_version"], f"{PIN_PREFIX}v{current['version']} serving")
                return PublishResult(
                    published=False, version=int(current["version"]), models=list(current["models"]), champions=key,
                    feature_version=current.get("feature_version", ""), mode=mode,
                    reason=POPULARITY_REASON + " (already)" if mode == "popularity" else "already serving these champions",
                )
            log.info("version %s holds these champions but is not READY on Triton: publishing anew", current["version"])

        writer = writer or four_stage_writer
        staging = _staging_root(repository) / uuid.uuid4().hex[:8]
        staging.mkdir(parents=True)
        try:
            return _publish_staged(
                s, repository, staging, champions, writer, smoke_test, airflow_run, force, smoke_user_id,
                mode=mode, feature_version=feature_version, data_version=data_version,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _smoke_user(s: Settings, feature_version: str) -> "int | str":
    """A real user of the feature version (its first raw user id, int or str), else 0."""
    path = s.features_root / feature_version / "id_maps" / "users.parquet"
    try:
        import pyarrow.parquet as pq

        column = pq.read_table(path, columns=["user_id_raw"]).column(0)
        return column[0].as_py() if len(column) else 0
    except Exception:  # the features folder is on another machine: popularity path
        return 0


def _publish_staged(s, repository, staging, champions, writer, smoke_test, airflow_run, force, smoke_user_id, *,
                    mode: str, feature_version: str, data_version: str) -> PublishResult:
    from recsys.serving.control import load_model
    from recsys.tracking.runs import client

    started = time.monotonic()
    exports = staging / "exports"
    digests = download_champions(champions, exports, s) if champions else {}
    key = champions_key(champions)
    ranker_weight = 1.0
    if "ranking" in champions:  # the scoring stage's blend, as the champions' training run chose it
        ranker_weight = float(client(s.mlflow_uri).get_run(champions["ranking"].run_id).data.metrics.get("pipeline_ranker_weight", 1.0))

    written = staging / "repository"
    written.mkdir()
    # Chosen before writing (the writer may embed it): above every version on disk or in the history.
    version = _next_version(repository, [p.name for p in repository.iterdir() if p.is_dir()])
    lineage = {
        "version": version,
        "mode": mode,
        "champions": {ch.role: ch.to_dict() for ch in champions.values()},
        "feature_version": feature_version,
        "data_version": data_version,
        "ranker_weight": ranker_weight,
        "airflow_run": airflow_run,
        "created_at": _now(),
        "artifacts_sha256": digests,
        "smoke_user_id": smoke_user_id if smoke_user_id is not None else _smoke_user(s, feature_version),
    }
    models = writer(exports, written, version, s, lineage)
    if not models:
        raise PublishError("the repository writer wrote no model")
    lineage["models"] = models
    for model in models:
        version_dir = written / model / str(version)
        config = written / model / CONFIG_FILE
        if not version_dir.is_dir() or not config.is_file():
            raise PublishError(f"the repository writer did not write {model}/{CONFIG_FILE} and {model}/{version}/ in {written}")
        shutil.copy2(config, version_dir / CONFIG_FILE)  # the version's own copy, restored by rollback
        (version_dir / LINEAGE_FILE).write_text(json.dumps({**lineage, "model": model}, indent=2, sort_keys=True) + "\n")

    entry = {"action": "publish", "version": version, "models": models, "champions": key, "mode": mode,
             "feature_version": feature_version, "airflow_run": airflow_run, "at": lineage["created_at"], "forced": force}
    if mode == "popularity":
        entry["reason"] = POPULARITY_REASON
    # Before anything loads: the new models read this feature version's online rows. The old pin
    # stays until the new version serves (the old models keep reading theirs until then).
    pinned_before = pin_feature_version(s, feature_version, f"{PIN_PREFIX}v{version} publishing")
    moved: list[str] = []
    try:
        for model in models:
            _move_into_place(written, repository, model, version)
            moved.append(model)
        for model in models:  # dependencies first
            log.info("loading %s version %d", model, version)
            load_model(s, model)
        smoke = smoke_test(s, {m: version for m in models}, lineage)
    except Exception as exc:
        restored = _restore_previous(s, repository, models, version, moved)
        restore_pin(s, feature_version, pinned_before)
        _append_history(repository, {**entry, "status": "failed", "error": _error_text(exc)})
        raise PublishError(
            f"publishing Triton version {version} failed, the new version was removed and {restored} "
            f"(champions {key}): {_error_text(exc)}"
        ) from exc

    _append_history(repository, {**entry, "status": "serving", "smoke": smoke})
    pin_feature_version(s, feature_version, f"{PIN_PREFIX}v{version} serving")
    release_other_pins(s, feature_version)
    _tag_model_versions(s, champions, {
        TAG_TRITON_VERSION: str(version),
        TAG_TRITON_PUBLISHED_AT: lineage["created_at"],
        TAG_TRITON_REPOSITORY: str(repository),
        TAG_AIRFLOW_RUN: airflow_run or "manual",
    })
    prune(repository, models, keep=s.triton_keep_versions)
    log.info("Triton version %d serves champions %s (feature version %s), published in %.1f s",
             version, key, feature_version, time.monotonic() - started)
    reason = POPULARITY_REASON if mode == "popularity" else ("forced" if force else "new champions")
    return PublishResult(published=True, version=version, models=models, champions=key,
                         feature_version=feature_version, reason=reason, smoke=smoke, mode=mode)


def _move_into_place(written: Path, repository: Path, model: str, version: int) -> None:
    """Rename the staged version folder into the repository, then replace the model's config atomically."""
    from recsys.serving.repository import activate_version

    target = repository / model / str(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise PublishError(f"{target} already exists; refusing to overwrite a published version")
    os.rename(written / model / str(version), target)
    activate_version(repository, model, version)


def _restore_config(repository: Path, model: str) -> Optional[int]:
    """Put back the config of the newest remaining version of ``model``; returns that version."""
    from recsys.serving.repository import activate_version

    remaining = model_versions(repository, model)
    if not remaining:
        (repository / model / CONFIG_FILE).unlink(missing_ok=True)
        return None
    activate_version(repository, model, remaining[-1])
    return remaining[-1]


def _restore_previous(s: Settings, repository: Path, models: list[str], version: int, moved: list[str]) -> str:
    """Remove version ``version`` of the ``moved`` models and make their previous versions serve again.

    Models not moved yet were never touched: they still serve their previous version.
    """
    from recsys.serving.control import load_model, unload_model

    serving, problems = [], []
    for model in moved:
        shutil.rmtree(repository / model / str(version), ignore_errors=True)
    for model in [m for m in models if m in moved]:  # dependencies first, like a publish
        previous = _restore_config(repository, model)
        if previous is None:  # the first publish of this model: nothing to go back to
            with contextlib.suppress(Exception):
                unload_model(s, model)
            if not any((repository / model).iterdir()):
                shutil.rmtree(repository / model, ignore_errors=True)
            continue
        try:
            load_model(s, model)  # loads the newest remaining folder: the previous version
        except Exception as exc:
            problems.append(f"{model}: reload of v{previous} failed ({_error_text(exc)})")
            continue
        if _ready(s, model, previous):
            serving.append(f"{model} v{previous}")
        else:
            problems.append(f"{model} v{previous} is not READY")
    if problems:
        log.error("restoring the previous version: %s", "; ".join(problems))
        return f"the previous version could NOT be fully restored ({'; '.join(problems)}; serving: {', '.join(serving) or 'nothing'})"
    return f"the previous version serves ({', '.join(serving)})" if serving else "nothing was serving before"


def _tag_model_versions(s: Settings, champions: dict[str, Champion], tags: dict[str, str]) -> None:
    from recsys.tracking.runs import client

    c = client(s.mlflow_uri)
    for ch in champions.values():
        for key, value in tags.items():
            c.set_model_version_tag(ch.name, ch.version, key, value)


def prune(repository: Path, models: list[str], keep: int) -> list[str]:
    """Delete all but the newest ``keep`` version folders of each model; returns what was deleted."""
    deleted = []
    for model in models:
        versions = model_versions(repository, model)
        for old in versions[: max(0, len(versions) - max(1, keep))]:
            shutil.rmtree(Path(repository) / model / str(old))
            deleted.append(f"{model}/{old}")
    if deleted:
        log.info("pruned old versions: %s", ", ".join(deleted))
    return deleted


# --- rollback ---------------------------------------------------------------------------------
def rollback(*, to_version: Optional[int] = None, reason: str = "", airflow_run: str = "",
             smoke_test: Optional[SmokeTest] = None, settings: Optional[Settings] = None) -> PublishResult:
    """Serve an older version again: the versions above it are moved aside and every model reloaded.

    ``to_version``: default the newest version on disk below the served one. The moved-aside folders go
    to ``<repo>/../.<repo name>.rolled_back/<model>/<N>-<timestamp>`` (evidence, never served again).
    Publishing afterwards publishes the champions again as a NEW number: move the MLflow ``champion``
    alias back first if the rolled-back models must not return.
    """
    s = settings or get_settings()
    from recsys.serving.control import load_model

    repository = s.triton_repo
    smoke_test = smoke_test or default_smoke_test
    with _publish_lock(repository):
        current = served(repository)
        if current is None:
            raise PublishError(f"nothing has been published to {repository}; nothing to roll back")
        models = list(current["models"])
        now_version = int(current["version"])
        candidates = sorted(set.intersection(*(set(model_versions(repository, m)) for m in models)))
        older = [v for v in candidates if v < now_version]
        target = to_version if to_version is not None else (older[-1] if older else None)
        if target is None or target not in candidates or target >= now_version:
            raise PublishError(
                f"cannot roll back from version {now_version} to {target}: versions on disk for all of "
                f"{models} are {candidates} (at most {s.triton_keep_versions} are kept)"
            )
        lineage = json.loads((repository / models[-1] / str(target) / LINEAGE_FILE).read_text())
        target_features = lineage.get("feature_version", "")
        if target_features:
            # The older models read their own feature version's rows: pinned (and back in Redis if it
            # was collected meanwhile) before they load; the newer pin stays until they serve.
            pin_feature_version(s, target_features, f"{PIN_PREFIX}v{target} rolling back")
            with contextlib.suppress(PublishError):  # no features folder here: the smoke test will tell
                ensure_online_store(target_features, lineage.get("data_version", ""), s)
        aside = repository.parent / f".{repository.name}.rolled_back"
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        for model in models:
            for newer in [v for v in model_versions(repository, model) if v > target]:
                (aside / model).mkdir(parents=True, exist_ok=True)
                os.rename(repository / model / str(newer), aside / model / f"{newer}-{stamp}")
            _restore_config(repository, model)
        try:
            for model in models:
                load_model(s, model)
            smoke = smoke_test(s, {m: target for m in models}, lineage)
        except Exception as exc:
            _append_history(repository, {"action": "rollback", "version": target, "from": now_version, "models": models,
                                         "status": "failed", "error": _error_text(exc), "at": _now()})
            raise PublishError(f"rollback to version {target} failed to serve: {_error_text(exc)}; "
                               f"the moved-aside versions are in {aside}") from exc
        champions = {ch["name"]: ch["version"] for ch in lineage["champions"].values()}
        if target_features:
            pin_feature_version(s, target_features, f"{PIN_PREFIX}v{target} serving")
            release_other_pins(s, target_features)
        _append_history(repository, {
            "action": "rollback", "version": target, "from": now_version, "models": models, "status": "serving",
            "champions": champions, "feature_version": lineage.get("feature_version", ""), "reason": reason,
            "airflow_run": airflow_run, "at": _now(), "smoke": smoke,
        })
        with contextlib.suppress(Exception):  # lineage tags are informative; the rollback itself succeeded
            from recsys.tracking.runs import client as mlflow_client

            c = mlflow_client(s.mlflow_uri)
            for name, version in (current.get("champions") or {}).items():
                c.set_model_version_tag(name, version, TAG_TRITON_ROLLED_BACK_AT, _now())
            for name, version in champions.items():
                c.set_model_version_tag(name, version, TAG_TRITON_VERSION, str(target))
        log.warning("rolled back Triton from version %d to %d (%s)", now_version, target, reason or "no reason given")
        return PublishResult(published=True, version=target, models=models, champions=champions,
                             feature_version=lineage.get("feature_version", ""), reason=f"rollback from {now_version}",
                             smoke=smoke)


# --- command line -----------------------------------------------------------------------------
def register_cli(serving_subparsers) -> None:
    """Add ``publish``, ``rollback`` and ``history`` to the ``recsys serving`` command group."""
    p = serving_subparsers.add_parser("publish", help="publish the MLflow champions to Triton (version N+1)")
    p.add_argument("--force", action="store_true", help="publish even if these champions already serve")
    p.set_defaults(func=_cli_publish)
    r = serving_subparsers.add_parser("rollback", help="serve the previous Triton version again")
    r.add_argument("--to-version", type=int, default=None, help="default: the version before the served one")
    r.add_argument("--reason", default="", help="recorded in publish_history.jsonl")
    r.set_defaults(func=_cli_rollback)
    h = serving_subparsers.add_parser("history", help="what was published, rolled back or refused")
    h.add_argument("--last", type=int, default=10)
    h.set_defaults(func=_cli_history)


def _cli_publish(args) -> int:
    print(json.dumps(publish(force=args.force).to_dict(), indent=2))
    return 0


def _cli_rollback(args) -> int:
    print(json.dumps(rollback(to_version=args.to_version, reason=args.reason).to_dict(), indent=2))
    return 0


def _cli_history(args) -> int:
    for entry in read_history(get_settings().triton_repo)[-args.last:]:
        if entry.get("mode") == "popularity" and entry.get("status") == "serving":
            print(f"# version {entry['version']}: {entry.get('reason', POPULARITY_REASON)}")
        print(json.dumps(entry, sort_keys=True))
    return 0
