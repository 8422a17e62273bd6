"""Publishing: the champion becomes version N+1 of every model in the Triton repository; rollback
serves an older version again. Both are transactions that share one step, :func:`_switch`.

A publish, in order (nothing the running server reads changes before step 4):

1. the plan (:class:`PublishPlan`): the champion from MLflow (:mod:`recsys.tracking.champions`), or the
   popularity list while no model beats it. A plan made by an earlier task is re-checked: if the
   ``champion`` aliases moved since, the publish refuses and changes nothing;
2. no-op if the served version already holds exactly this plan (unless ``force``);
3. in a staging folder beside the repository: the champion's artifacts downloaded and verified
   (:mod:`recsys.tracking.artifacts`), N+1 chosen (never reusing a number, not even a failed
   attempt's), every model's version written COMPLETELY by the repository writer, with its lineage;
4. the shared step: pin the feature version the new models read (:mod:`recsys.online.pins`), move
   each ``<model>/<N+1>/`` into the repository and activate its config, load every model
   (dependencies first), smoke-test (:mod:`recsys.serving.smoke`); then record it in the history
   (:mod:`recsys.serving.history`), pin as serving and release the pins of what served before;
5. tag the MLflow model versions (``triton.version``, ``triton.published_at``, ``airflow.run``) and
   prune old version folders (``triton_keep_versions`` are kept for rollback).

On any failure in step 4 the new folders are removed, the previous configs restored and every model
reloaded, so the previous version keeps serving (Triton keeps the old version of a model whose new
version fails to load), the pin goes back, the history records the failure and :class:`PublishError`
says what failed and what serves now.

A rollback moves the versions above the target aside (``.<repo>.rolled_back/``, never served again),
activates the target's own config copy and runs the same step; if the target fails to load, the
versions come back and the one that served is activated and reloaded.

Either way the repository on disk holds, when :class:`PublishError` is raised, exactly the version that
served before (each model's ``config.pbtxt`` points at it): a Triton killed during the switch serves
that version when it restarts, and the retried publish takes a new number. A process killed during the
switch (between its first move and its history record) leaves the repository ahead of its history;
the history decides: before every publish and rollback, and before Triton starts,
:func:`recover_interrupted` puts the repository back to what the history says serves. Every model verifies its
version folder against the seal written with it before loading (:func:`recsys.serving.repository.verify_version`). Layout: :class:`recsys.layout.TritonRepository`.

    from recsys.serving.publish import publish, rollback
    publish(airflow_run="recsys_publish/manual__2026-01-01")   # PublishResult(published, version, ...)
    rollback(reason="CTR dropped")                              # serve the version before again
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from recsys.errors import error_text
from recsys.layout import TritonRepository
from recsys.online import pins
from recsys.serving import history
from recsys.serving.history import now_iso
from recsys.serving.repository import (
    RepositoryWriter,
    activate_newest,
    four_stage_writer,
    popularity_writer,
    prune,
    seal_version,
)
from recsys.serving.plan import MODELS, POPULARITY, POPULARITY_REASON, PublishError, PublishPlan
from recsys.serving.smoke import SmokeTest, default_smoke_test, is_ready, smoke_user
from recsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Tags written on the MLflow model versions that a Triton version serves.
TAG_TRITON_VERSION = "triton.version"
TAG_TRITON_PUBLISHED_AT = "triton.published_at"
TAG_TRITON_REPOSITORY = "triton.repository"
TAG_AIRFLOW_RUN = "airflow.run"
TAG_TRITON_ROLLED_BACK_AT = "triton.rolled_back_at"


@dataclass
class PublishResult:
    published: bool
    """False: nothing changed (already serving this plan)."""
    version: int
    """The Triton version serving afterwards."""
    models: list[str] = field(default_factory=list)
    champions: dict[str, str] = field(default_factory=dict)
    feature_version: str = ""
    reason: str = ""
    smoke: dict[str, Any] = field(default_factory=dict)
    mode: str = MODELS
    """``models``, or ``popularity`` while no model beats the popularity baseline."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the step both transactions share -------------------------------------------------------------
def _switch(s: Settings, repo: TritonRepository, models: list[str], version: int, lineage: dict[str, Any],
            smoke_test: SmokeTest, entry: dict[str, Any], *, pin_reason: str,
            install: Callable[[], None], failed: Callable[[str], str]) -> dict[str, Any]:
    """Pin the version's feature version, ``install`` it on disk, load every model, smoke-test, record.

    On failure ``failed(error)`` undoes ``install`` and returns the message; the pin goes back, the
    history records the failure and :class:`PublishError` is raised. Returns the smoke test's details.
    """
    from recsys.serving.control import load_model

    feature_version = lineage.get("feature_version", "")
    # Before anything loads: the new models read this feature version's online rows. The old pin
    # stays until the new version serves (the old models keep reading theirs until then).
    try:
        pinned_before = pins.pin_feature_version(s, feature_version, pin_reason) if feature_version else None
    except pins.PinError as exc:
        raise PublishError(str(exc)) from exc
    try:
        install()
        for model in models:  # dependencies first
            log.info("loading %s version %d", model, version)
            load_model(s, model)
        smoke = smoke_test(s, {m: version for m in models}, lineage)
    except Exception as exc:
        message = failed(error_text(exc))
        if feature_version:
            pins.restore_pin(s, feature_version, pinned_before)
        history.append_entry(repo, {**entry, "status": "failed", "error": error_text(exc)})
        raise PublishError(message) from exc
    history.append_entry(repo, {**entry, "status": "serving", "smoke": smoke})
    if feature_version:
        pins.pin_feature_version(s, feature_version, f"{pins.PIN_PREFIX}v{version} serving")
        pins.release_other_pins(s, feature_version)
    return smoke


def _tag_model_versions(s: Settings, versions: dict[str, str], tags: dict[str, str]) -> None:
    from recsys.tracking.runs import client

    c = client(s.mlflow_uri)
    for name, model_version in versions.items():
        for key, value in tags.items():
            c.set_model_version_tag(name, model_version, key, value)


# --- publish ---------------------------------------------------------------------------------------
def publish(*, force: bool = False, airflow_run: str = "", plan: Optional[PublishPlan] = None,
            writer: Optional[RepositoryWriter] = None, smoke_test: Optional[SmokeTest] = None,
            settings: Optional[Settings] = None, smoke_user_id: "Optional[int | str]" = None) -> PublishResult:
    """Publish ``plan`` (default: resolved now) as Triton version N+1 (see the module docstring).

    ``force``: publish even when the served version already holds this plan. ``airflow_run``:
    ``"<dag_id>/<run_id>"`` recorded in the lineage. ``smoke_user_id``: raw user id of the ``recsys``
    smoke request (default: the first user of the feature version, else 0, an unknown user).
    """
    s = settings or get_settings()
    repo = TritonRepository(s.triton_repo)
    repo.path.mkdir(parents=True, exist_ok=True)
    if plan is None:
        plan = PublishPlan.resolve(s)
    else:
        plan.check_still_current(s)
    writer = writer or (four_stage_writer if plan.champion else popularity_writer)
    with history.publish_lock(repo):
        recover_interrupted(repo)
        current = history.served(repo)
        same = current and current.get("champions") == plan.key and current.get("mode", MODELS) == plan.mode
        if plan.mode == POPULARITY and same:  # the popularity list of another feature version is another version
            same = current.get("feature_version") == plan.feature_version
        if same and not force:
            versions = {m: int(current["version"]) for m in current["models"]}
            if all(is_ready(s, m, v) for m, v in versions.items()):
                log.info("Triton version %s already serves %s: nothing to publish", current["version"], plan.key or POPULARITY)
                if current.get("feature_version"):  # pins lost with Redis come back
                    pins.pin_feature_version(s, current["feature_version"], f"{pins.PIN_PREFIX}v{current['version']} serving")
                return PublishResult(
                    published=False, version=int(current["version"]), models=list(current["models"]), champions=plan.key,
                    feature_version=current.get("feature_version", ""), mode=plan.mode,
                    reason=POPULARITY_REASON + " (already)" if plan.mode == POPULARITY else "already serving these champions",
                )
            log.info("version %s holds this plan but is not READY on Triton: publishing anew", current["version"])
        staging = repo.staging_root / uuid.uuid4().hex[:8]
        staging.mkdir(parents=True)
        try:
            return _publish_staged(s, repo, staging, plan, writer, smoke_test or default_smoke_test, airflow_run, force,
                                   smoke_user_id)
        except Exception as exc:
            from recsys.data.versioning import raise_storage_error

            shutil.rmtree(staging, ignore_errors=True)
            raise_storage_error(exc, repo.path)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _publish_staged(s: Settings, repo: TritonRepository, staging: Path, plan: PublishPlan, writer: RepositoryWriter,
                    smoke_test: SmokeTest, airflow_run: str, force: bool, smoke_user_id) -> PublishResult:
    from recsys.tracking.artifacts import download_champion

    started = time.monotonic()
    exports = staging / "exports"
    digests = download_champion(plan.champion, exports, s) if plan.champion else {}
    written = TritonRepository(staging / "repository")
    written.path.mkdir()
    version = history.next_version(repo)  # chosen before writing: the writer may embed it
    lineage = {
        "version": version, "mode": plan.mode, "feature_version": plan.feature_version, "data_version": plan.data_version,
        "champions": {m.role: {**asdict(m), "feature_version": plan.feature_version, "data_version": plan.data_version}
                      for m in plan.champion.models.values()} if plan.champion else {},
        "ranker_weight": plan.champion.ranker_weight if plan.champion else 1.0,
        "prior_slot": plan.prior_slot,
        "airflow_run": airflow_run, "created_at": now_iso(), "artifacts_sha256": digests,
        "smoke_user_id": smoke_user_id if smoke_user_id is not None else smoke_user(s, plan.feature_version),
    }
    models = writer(exports, written.path, version, s, lineage)
    if not models:
        raise PublishError("the repository writer wrote no model")
    lineage["models"] = models
    for model in models:
        if not written.version_dir(model, version).is_dir() or not written.config(model).is_file():
            raise PublishError(f"the repository writer did not write {written.config(model)} and {written.version_dir(model, version)}")
        if not (written.version_config(model, version).is_file() and written.lineage(model, version).is_file()):
            seal_version(written, model, version, {**lineage, "model": model})  # a writer that left it to publish

    entry = {"action": "publish", "version": version, "models": models, "champions": plan.key, "mode": plan.mode,
             "feature_version": plan.feature_version, "airflow_run": airflow_run, "at": lineage["created_at"], "forced": force}
    if plan.mode == POPULARITY:
        entry["reason"] = POPULARITY_REASON
    moved: list[str] = []

    def install() -> None:
        for model in models:
            target = repo.version_dir(model, version)
            if target.exists():
                raise PublishError(f"{target} already exists; refusing to overwrite a published version")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(written.version_dir(model, version), target)
            moved.append(model)
            activate_newest(repo, model)

    def failed(error: str) -> str:
        restored = _restore_previous(s, repo, models, version, moved)
        return f"publishing Triton version {version} failed, the new version was removed and {restored} (champions {plan.key}): {error}"

    smoke = _switch(s, repo, models, version, lineage, smoke_test, entry, install=install, failed=failed,
                    pin_reason=f"{pins.PIN_PREFIX}v{version} publishing")
    _tag_model_versions(s, plan.key, {TAG_TRITON_VERSION: str(version), TAG_TRITON_PUBLISHED_AT: lineage["created_at"],
                                      TAG_TRITON_REPOSITORY: str(repo.path), TAG_AIRFLOW_RUN: airflow_run or "manual"})
    prune(repo, models, keep=s.triton_keep_versions)
    log.info("Triton version %d serves %s (feature version %s), published in %.1f s",
             version, plan.key or POPULARITY, plan.feature_version, time.monotonic() - started)
    reason = POPULARITY_REASON if plan.mode == POPULARITY else ("forced" if force else "new champions")
    return PublishResult(published=True, version=version, models=models, champions=plan.key,
                         feature_version=plan.feature_version, reason=reason, smoke=smoke, mode=plan.mode)


def _restore_previous(s: Settings, repo: TritonRepository, models: list[str], version: int, moved: list[str]) -> str:
    """Remove version ``version`` of the ``moved`` models and make their previous versions serve again.

    Models not moved yet were never touched: they still serve their previous version.
    """
    for model in moved:
        shutil.rmtree(repo.version_dir(model, version), ignore_errors=True)
    return _serve_newest(s, repo, [m for m in models if m in moved])


def _serve_newest(s: Settings, repo: TritonRepository, models: list[str]) -> str:
    """Activate the newest version on disk of each of ``models`` and reload it on every Triton replica; says
    what serves.

    The repository is put right first, so a Triton that is down (killed meanwhile) loads exactly
    these versions when it restarts (``--load-model=*``): never half of a failed switch. Then one loop over
    the replicas: each reloads the models (dependencies first), whatever the others did.
    """
    from recsys.serving.control import load_model, server_live, unload_model
    from recsys.serving.triton_client import endpoints

    previous: dict[str, int] = {}
    for model in models:
        newest = activate_newest(repo, model)
        if newest is None:  # the first publish of this model: nothing to go back to
            with contextlib.suppress(Exception):
                unload_model(s, model)
            if not any(repo.model_dir(model).iterdir()):
                shutil.rmtree(repo.model_dir(model), ignore_errors=True)
            continue
        previous[model] = newest
    on_disk = [f"{model} v{version}" for model, version in previous.items()]
    if not previous:
        return "nothing was serving before"
    problems, down, serving_on = [], [], []
    for at in endpoints(s):
        if not server_live(s, at):
            down.append(at)
            continue
        failed = []
        for model, version in previous.items():
            try:
                load_model(s, model, at=at)  # loads the newest remaining folder: the previous version
            except Exception as exc:
                failed.append(f"{model}: reload of v{version} failed ({error_text(exc)})")
                continue
            if not is_ready(s, model, version, at=at):
                failed.append(f"{model} v{version} is not READY")
        problems += [f"{at}: {problem}" for problem in failed]
        if not failed:
            serving_on.append(at)
    if problems:
        log.error("restoring the previous version: %s", "; ".join(problems))
        return (f"the previous version could NOT be fully restored ({'; '.join(problems)}; serving it: "
                f"{', '.join(str(at) for at in serving_on) or 'no replica'})")
    if down:
        names = ", ".join(str(at) for at in down)
        log.error("%s not answering; the repository serves %s again", names, ", ".join(on_disk))
        also = f"; the others serve it again ({', '.join(str(at) for at in serving_on)})" if serving_on else ""
        return (f"{names} is not answering (down or restarting): the repository holds the previous "
                f"version again ({', '.join(on_disk)}), which Triton serves when it is up again (`recsys stack up`){also}")
    where = " on every replica" if len(serving_on) > 1 else ""
    return f"the previous version serves ({', '.join(on_disk)}){where}"


# --- recovery of an interrupted switch ----------------------------------------------------------------
def recover_interrupted(repo: TritonRepository) -> list[str]:
    """Put the repository back to what its history says serves, after a publish or rollback was killed
    between its first change on disk and its history record; returns what was changed (also logged).

    The caller holds :func:`history.publish_lock`. A switch that finishes records its outcome before it
    returns, and a failed one undoes its changes first, so on disk: a version folder above the served
    version was never recorded as serving (a publish killed after moving it in; it may have been
    loaded, never smoke-tested) and is removed; a served version missing from its model folder was
    moved aside by a killed rollback and comes back; each model's config is then its newest version's,
    the served one, which a restarted Triton loads (``--load-model=*``). The staging folders a killed
    publish left beside the repository are removed too.
    """
    entries = history.read_history(repo)
    served = history.served(repo)
    top = int(served["version"]) if served else 0
    served_models = set(served["models"]) if served else set()
    changes: list[str] = []
    removed: list[int] = []
    # Only models publishing manages (named in the history): others in the folder (the benchmark's floor,
    # a model an operator placed) are not ours to judge. A killed FIRST publish is thus left as it is.
    for model in sorted({m for e in entries for m in e.get("models", [])} & set(repo.models())):
        above = [v for v in repo.versions(model) if v > top]
        for version in above:
            shutil.rmtree(repo.version_dir(model, version))
        removed += above
        touched = [f"removed {model}/{v} (never recorded as serving)" for v in above]
        if model in served_models and top not in repo.versions(model):
            aside = sorted((repo.rolled_back / model).glob(f"{top}-*")) if (repo.rolled_back / model).is_dir() else []
            if aside:
                os.rename(aside[-1], repo.version_dir(model, top))
                touched.append(f"brought {model}/{top} back from {aside[-1]}")
        remaining = repo.versions(model)
        if not remaining and touched:  # an unrecorded first version was all there was
            shutil.rmtree(repo.model_dir(model))
        elif remaining and (not repo.config(model).is_file() or
                            repo.config(model).read_text() != repo.version_config(model, remaining[-1]).read_text()):
            activate_newest(repo, model)  # e.g. a rollback killed after activating its target
            touched.append(f"{model}'s config on version {remaining[-1]} again")
        changes += touched
    # A killed publish's staging folder (its download and written version): no switch is alive (the lock).
    stale = sorted(repo.staging_root.iterdir()) if repo.staging_root.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    if stale:
        log.warning("removed %d staging folder(s) a killed publish left in %s", len(stale), repo.staging_root)
    if changes:
        log.warning("the repository %s was ahead of its history (a publish or rollback was interrupted): %s",
                    repo.path, "; ".join(changes))
        # Recorded like a failed attempt: the journal says what happened, and a removed version's number is
        # never given again (Triton may have loaded the killed try's folder under it).
        history.append_entry(repo, {
            "action": "publish" if removed else "rollback", "version": max(removed) if removed else top,
            "models": sorted(served_models), "status": "interrupted", "at": now_iso(),
            "error": "the process was killed during the switch; recovered: " + "; ".join(changes)})
    return changes


# --- rollback --------------------------------------------------------------------------------------
def rollback(*, to_version: Optional[int] = None, reason: str = "", airflow_run: str = "",
             smoke_test: Optional[SmokeTest] = None, settings: Optional[Settings] = None) -> PublishResult:
    """Serve an older version again: the versions above it are moved aside and every model reloaded.

    ``to_version``: default the newest version on disk below the served one. Publishing afterwards
    publishes the champion again as a NEW number: move the MLflow ``champion`` alias back first if the
    rolled-back models must not return.
    """
    import json

    s = settings or get_settings()
    repo = TritonRepository(s.triton_repo)
    with history.publish_lock(repo):
        recover_interrupted(repo)
        current = history.served(repo)
        if current is None:
            raise PublishError(f"nothing has been published to {repo.path}; nothing to roll back")
        models, now_version = list(current["models"]), int(current["version"])
        candidates = sorted(set.intersection(*(set(repo.versions(m)) for m in models)))
        older = [v for v in candidates if v < now_version]
        target = to_version if to_version is not None else (older[-1] if older else None)
        if target is None or target not in candidates or target >= now_version:
            raise PublishError(f"cannot roll back from version {now_version} to {target}: versions on disk for all of "
                               f"{models} are {candidates} (at most {s.triton_keep_versions} are kept)")
        lineage = json.loads(repo.lineage(models[-1], target).read_text())
        champions = {ch["name"]: ch["version"] for ch in lineage["champions"].values()}
        feature_version = lineage.get("feature_version", "")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        entry = {"action": "rollback", "version": target, "from": now_version, "models": models, "champions": champions,
                 "feature_version": feature_version, "reason": reason, "airflow_run": airflow_run, "at": now_iso()}

        moved_aside: list[tuple[Path, Path]] = []

        def install() -> None:
            if feature_version:  # back in Redis if it was collected meanwhile; if not, the smoke test tells
                with contextlib.suppress(pins.PinError):
                    pins.ensure_online_store(feature_version, lineage.get("data_version", ""), s)
            for model in models:
                for newer in [v for v in repo.versions(model) if v > target]:
                    (repo.rolled_back / model).mkdir(parents=True, exist_ok=True)
                    aside = repo.rolled_back / model / f"{newer}-{stamp}"
                    os.rename(repo.version_dir(model, newer), aside)
                    moved_aside.append((aside, repo.version_dir(model, newer)))
                activate_newest(repo, model)

        def failed(error: str) -> str:
            # The versions moved aside come back and the one that served is activated again: the
            # repository never keeps a target that failed to load (a restarted Triton would load it).
            for aside, home in reversed(moved_aside):
                os.rename(aside, home)
            restored = _serve_newest(s, repo, models)
            return f"rollback to version {target} failed, version {now_version} was put back and {restored}: {error}"

        smoke = _switch(s, repo, models, target, lineage, smoke_test or default_smoke_test, entry, install=install,
                        failed=failed, pin_reason=f"{pins.PIN_PREFIX}v{target} rolling back")
        with contextlib.suppress(Exception):  # lineage tags are informative; the rollback itself succeeded
            _tag_model_versions(s, current.get("champions") or {}, {TAG_TRITON_ROLLED_BACK_AT: now_iso()})
            _tag_model_versions(s, champions, {TAG_TRITON_VERSION: str(target)})
        log.warning("rolled back Triton from version %d to %d (%s)", now_version, target, reason or "no reason given")
        return PublishResult(published=True, version=target, models=models, champions=champions,
                             feature_version=feature_version, reason=f"rollback from {now_version}", smoke=smoke)
