"""A champion's artifacts from MLflow, downloaded and verified before anything loads them.

The download mirrors the run's artifact folders (:class:`recsys.layout.RunExports`: ``retrieval/``,
``ranking/``, ``workflows/``). Verified: every file a role needs exists (:data:`recsys.layout.EXPECTED_FILES`),
every file has the size MLflow lists, and every file the run's ``checksums.json`` lists has that sha256.
Used by publishing (what Triton will load) and by training (the champion it re-scores).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Optional

from recsys.errors import RecsysError
from recsys.layout import CHECKSUMS_FILE, EXPECTED_FILES, RETRIEVAL, WORKFLOWS
from recsys.settings import Settings, get_settings
from recsys.tracking.champions import Champion

log = logging.getLogger(__name__)


class ArtifactError(RecsysError):
    """A champion's artifacts are missing files or do not match their recorded size / checksum."""


def _listing(c, run_id: str, path: str) -> dict[str, int]:
    """``{path: size}`` of every file under ``path`` in a run's artifacts (recursive)."""
    files: dict[str, int] = {}
    for info in c.list_artifacts(run_id, path):
        if info.is_dir:
            files.update(_listing(c, run_id, info.path))
        else:
            files[info.path] = int(info.file_size or 0)
    return files


def download_champion(champion: Champion, dst: Path, settings: Optional[Settings] = None, mlflow_client=None) -> dict[str, str]:
    """Download each champion model's artifact folder to ``dst/<role>/`` and verify it; returns ``{path: sha256}``.

    Also downloads the retrieval run's ``workflows/`` (the fitted NVTabular workflows) when it has one.
    Raises :class:`ArtifactError` naming the file when anything is missing, short or altered.
    """
    from recsys.tracking.runs import client

    s = settings or get_settings()
    c = mlflow_client or client(s.mlflow_uri)
    dst = Path(dst)
    expected_sizes: dict[str, int] = {}
    checksums: dict[str, str] = {}
    for role, model in champion.models.items():
        listing = _listing(c, model.run_id, role)
        if not listing:
            raise ArtifactError(f"{model.name} v{model.version}: run {model.run_id} has no artifacts under {role!r}")
        folders = [role]
        root_names = {info.path for info in c.list_artifacts(model.run_id)}
        if role == RETRIEVAL and WORKFLOWS in root_names:
            listing.update(_listing(c, model.run_id, WORKFLOWS))
            folders.append(WORKFLOWS)
        expected_sizes.update(listing)
        if CHECKSUMS_FILE in root_names:
            where = dst / ".checksums" / model.run_id
            recorded = json.loads(Path(c.download_artifacts(model.run_id, CHECKSUMS_FILE, str(where))).read_text())
            checksums.update({p: h for p, h in recorded.items() if p.split("/", 1)[0] in folders})
        for folder in folders:
            log.info("downloading %s v%s artifacts %r from run %s", model.name, model.version, folder, model.run_id)
            c.download_artifacts(model.run_id, folder, str(dst))
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


def write_checksums(run_dir: Path) -> Path:
    """Write ``checksums.json`` (the sha256 of every file of a training output, by relative path) into it."""
    from recsys.data.versioning import sha256_file, write_json_atomic
    from recsys.layout import RunExports

    target = RunExports(Path(run_dir)).checksums
    files = sorted(p for p in target.parent.rglob("*") if p.is_file() and p != target)
    write_json_atomic(target, {p.relative_to(target.parent).as_posix(): sha256_file(p) for p in files})
    return target
