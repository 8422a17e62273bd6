"""Atomic, content-addressed version folders, shared by every hop of the pipeline.

Each hop (ingest, ETL, training, online refresh) writes a complete new version folder and never
edits an old one:

    with atomic_directory(root / version) as tmp:
        ...write files into tmp...
        write_json_atomic(tmp / "manifest.json", manifest)

The folder appears under its final name only when the block succeeds (one ``rename``), so a
reader never sees half a version, and a crash leaves no partial folder under a version name.
A version is *complete* when it holds a ``manifest.json``; :func:`list_versions` lists only those.
Only the standard library is used here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from recsys.errors import RecsysError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_TMP_MARK = ".tmp-"


class VersionNotFoundError(RecsysError):
    """A version folder or its manifest is missing."""


class StorageError(RecsysError):
    """Writing a version ran out of room (disk full, quota, file-size limit) or the folder is read-only.
    Nothing changed: the half-written folder was removed. Not bad input: a retry after room is made works."""


# Errors of the storage, not of the content: named as such, with the version that could not be written.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


@dataclass(frozen=True)
class Version:
    """One complete version folder: its name, where it is, and its manifest."""

    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def created_at(self) -> str:
        return str(self.manifest.get("created_at", ""))


def raise_storage_error(exc: BaseException, target: Path) -> None:
    """If ``exc`` is the storage's (disk full, quota, file-size limit, read-only), raise it again as a
    :class:`StorageError` naming ``target``, the version that could not be written; else return.
    For writers that clean up their own half-written folder (``atomic_directory``, publishing's staging)."""
    cause, seen = exc, set()
    while cause is not None and id(cause) not in seen:  # a library may wrap it (MLflow's download does)
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _STORAGE_ERRNOS:
            raise StorageError(
                f"could not write {target}: {os.strerror(cause.errno)} ({cause}); nothing was changed: "
                f"the half-written folder was removed and earlier versions are intact"
            ) from exc
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, RecsysError):
        return  # our own message already says what is wrong: no probe write on that path
    probe = _storage_problem(Path(target).parent)
    if probe is not None:  # the writer lost the storage's error (NVTabular's dask writers do): ask the disk
        raise StorageError(
            f"could not write {target}: {os.strerror(probe.errno)} (a 1 MiB probe write failed the same way "
            f"after: {type(exc).__name__}: {exc}); nothing was changed: the half-written folder was removed "
            f"and earlier versions are intact"
        ) from exc


def _storage_problem(folder: Path) -> Optional[OSError]:
    """The storage's error if a 1 MiB write into ``folder`` fails now (disk full, quota, file-size limit)."""
    probe = folder / f".storage-probe-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc if exc.errno in _STORAGE_ERRNOS else None
    finally:
        probe.unlink(missing_ok=True)
    return None


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``target``; rename it to ``target`` on success.

    On any exception the temporary folder is removed and the exception propagates. If ``target``
    already exists when the block ends (versions are content-addressed, so an existing folder
    already holds the same content), it is left alone and the new work is discarded; check
    ``target.exists()`` beforehand to skip the work entirely.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_storage_error(exc, target)
        raise
    if target.exists():
        log.info("%s already exists; discarding the new copy", target)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    try:
        os.rename(tmp, target)
    except OSError:
        # another writer renamed the same content into place between our check and our rename
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.exists():
            raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON; readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.parent / f".{path.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def read_manifest(directory: Path) -> dict[str, Any]:
    """The ``manifest.json`` of a version folder (raises ``VersionNotFoundError`` if absent)."""
    path = Path(directory) / MANIFEST
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise VersionNotFoundError(f"{directory}: not a complete version (no {MANIFEST})") from None
    except json.JSONDecodeError as exc:
        raise VersionNotFoundError(f"{path}: unreadable manifest ({exc})") from None


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


HashPart = Union[bytes, str, Path, dict, list, tuple, int, float, bool, None]


def content_hash(*parts: HashPart, length: int = 12) -> str:
    """A short hex id for some content: the first ``length`` hex digits of a sha256.

    Each part is hashed by what it is: ``bytes`` and ``str`` as they are, a ``Path`` by its file's
    bytes (a folder by its files' relative names and bytes, in sorted order), anything else as
    canonical JSON (sorted keys). Parts are separated, so ``("ab", "c") != ("a", "bc")``.
    """
    digest = hashlib.sha256()
    for part in parts:
        digest.update(_part_bytes(part))
        digest.update(b"\x00\x1f")
    return digest.hexdigest()[:length]


def _part_bytes(part: HashPart) -> bytes:
    if isinstance(part, bytes):
        return b"b:" + part
    if isinstance(part, str):
        return b"s:" + part.encode("utf-8")
    if isinstance(part, Path):
        if part.is_dir():
            entries = [
                f"{p.relative_to(part).as_posix()}={sha256_file(p)}"
                for p in sorted(part.rglob("*"))
                if p.is_file()
            ]
            return b"d:" + "\n".join(entries).encode("utf-8")
        return b"f:" + sha256_file(part).encode("ascii")
    return b"j:" + json.dumps(part, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def utc_now_iso() -> str:
    """Current time as ISO-8601 UTC with microseconds (sortable as text), for ``created_at``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def list_versions(root: Path) -> list[Version]:
    """Complete versions under ``root`` (folders with a manifest), newest first by ``created_at``.

    Temporary folders of writes in progress (hidden names) and folders without a readable
    manifest are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if not child.is_dir() or child.name.startswith("."):
            continue
        try:
            manifest = read_manifest(child)
        except VersionNotFoundError:
            continue
        found.append(Version(child.name, child, manifest))
    found.sort(key=lambda v: (v.created_at, v.version), reverse=True)
    return found


def latest_version(root: Path) -> Optional[Version]:
    """The newest complete version under ``root``, or None when there is none."""
    versions = list_versions(root)
    return versions[0] if versions else None


def get_version(root: Path, version: str) -> Version:
    """A named complete version under ``root`` (raises ``VersionNotFoundError``)."""
    path = Path(root) / version
    return Version(version, path, read_manifest(path))
