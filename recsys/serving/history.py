"""The publish history: ``<repository>/publish_history.jsonl``, one JSON line per publish or rollback.

Every attempt is recorded, failed ones too (``status``: ``serving`` or ``failed``, with ``error``), so
the file is the journal of what served when and why. What serves now is the last ``serving`` entry.
Version numbers are never reused, not even a failed attempt's (:func:`next_version`). One publish or
rollback at a time per repository (:func:`publish_lock`, an ``flock`` beside the repository).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from datetime import datetime, timezone
from typing import Any, Iterator, Optional

from pathlib import Path

from recsys.layout import TritonRepository

def _layout(repository: "TritonRepository | Path") -> TritonRepository:
    return repository if isinstance(repository, TritonRepository) else TritonRepository(Path(repository))


def read_history(repository: "TritonRepository | Path") -> list[dict[str, Any]]:
    """Every entry, oldest first."""
    path = _layout(repository).history
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_entry(repository: "TritonRepository | Path", entry: dict[str, Any]) -> None:
    # One short line with O_APPEND, fsynced: readers see whole lines, a crash loses at most this one.
    line = json.dumps(entry, sort_keys=True, default=str) + "\n"
    with open(_layout(repository).history, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def served(repository: "TritonRepository | Path") -> Optional[dict[str, Any]]:
    """The entry of what serves now (the last successful publish or rollback), or None."""
    for entry in reversed(read_history(repository)):
        if entry.get("status") == "serving":
            return entry
    return None


def next_version(repository: "TritonRepository | Path") -> int:
    """Above every version folder on disk and every version the history names (failed attempts too)."""
    repo = _layout(repository)
    numbers = [v for m in repo.models() for v in repo.versions(m)]
    numbers += [int(e["version"]) for e in read_history(repository) if "version" in e]
    return max(numbers, default=0) + 1


@contextlib.contextmanager
def publish_lock(repository: "TritonRepository | Path", wait: bool = True) -> Iterator[bool]:
    """One publish / rollback at a time per repository (a second one waits). Yields whether it is held:
    with ``wait=False``, False at once when another process holds it. A killed holder releases it."""
    lock_path = _layout(repository).lock_file
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
