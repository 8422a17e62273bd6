"""Atomic version folders: appear complete or not at all."""

from __future__ import annotations

import json
import time

import pytest

from recsys.data.versioning import (
    VersionNotFoundError,
    atomic_directory,
    content_hash,
    get_version,
    latest_version,
    list_versions,
    read_manifest,
    sha256_file,
    utc_now_iso,
    write_json_atomic,
)


def test_atomic_directory_renames_on_success(tmp_path):
    target = tmp_path / "root" / "v1"
    with atomic_directory(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert not target.exists()
        (tmp / "a.txt").write_text("hello")
    assert (target / "a.txt").read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["v1"]


def test_atomic_directory_removes_everything_on_error(tmp_path):
    target = tmp_path / "v1"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_leaves_an_existing_version_alone(tmp_path):
    target = tmp_path / "v1"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_write_json_atomic_and_read_manifest(tmp_path):
    write_json_atomic(tmp_path / "manifest.json", {"b": 1, "a": [1, 2]})
    write_json_atomic(tmp_path / "manifest.json", {"b": 2})
    assert read_manifest(tmp_path) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    with pytest.raises(VersionNotFoundError):
        read_manifest(tmp_path / "missing")


def test_write_json_atomic_failing_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "manifest.json"
    write_json_atomic(path, {"version": 1})
    written_when_it_failed = []

    class FailsHalfWay:
        """Serialized after a megabyte of the new file went out: the write fails part-way through."""

        def __str__(self):
            (partial,) = [p for p in tmp_path.iterdir() if p != path]
            written_when_it_failed.append(partial.stat().st_size)
            raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(path, {"a": "x" * 1_000_000, "b": FailsHalfWay()})
    assert written_when_it_failed[0] > 1_000_000  # the new content was half on disk
    assert read_manifest(tmp_path) == {"version": 1}  # readers still see the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # the half file is gone


def _v1(root):
    with atomic_directory(root / "v1") as tmp:
        (tmp / "data.bin").write_bytes(b"one" * 1000)
        write_json_atomic(tmp / "manifest.json", {"created_at": utc_now_iso(), "name": "v1"})
    return (root / "v1" / "data.bin").read_bytes()


def test_atomic_directory_whose_final_rename_fails_leaves_the_earlier_version_and_no_half_folder(tmp_path, monkeypatch):
    import errno
    import os

    from recsys.data import versioning

    root = tmp_path / "versions"
    v1_data = _v1(root)

    def rename_fails(src, dst):
        raise OSError(errno.EIO, "Input/output error", str(dst))

    monkeypatch.setattr(versioning.os, "rename", rename_fails)
    with pytest.raises(OSError, match="Input/output error"):
        with atomic_directory(root / "v2") as tmp:
            (tmp / "data.bin").write_bytes(b"two" * 1000)
            write_json_atomic(tmp / "manifest.json", {"created_at": utc_now_iso(), "name": "v2"})
    monkeypatch.setattr(versioning.os, "rename", os.rename)
    assert sorted(p.name for p in root.iterdir()) == ["v1"]  # no v2, not even a temporary one
    assert [v.version for v in list_versions(root)] == ["v1"]
    assert (root / "v1" / "data.bin").read_bytes() == v1_data


def test_atomic_directory_of_a_killed_writer_leaves_the_earlier_version_and_no_half_version(tmp_path):
    """A writer SIGKILLed half-way (nothing of it runs after the kill): readers see the earlier version only."""
    import os
    import signal
    import subprocess
    import sys

    root = tmp_path / "versions"
    v1_data = _v1(root)
    writer = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time\n"
            "from pathlib import Path\n"
            "from recsys.data.versioning import atomic_directory\n"
            "with atomic_directory(Path(sys.argv[1]) / 'v2') as tmp:\n"
            "    (tmp / 'data.bin').write_bytes(b'two' * 1000)\n"
            "    print('half', flush=True)\n"
            "    time.sleep(60)\n"
            "    (tmp / 'manifest.json').write_text('{}')\n"
        ), str(root)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout.readline() == "half\n"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in root.iterdir() if p.name != "v1")
    assert len(leftovers) == 1 and leftovers[0].startswith(".v2.tmp-")  # the half write: hidden, never "v2"
    assert [v.version for v in list_versions(root)] == ["v1"] and latest_version(root).version == "v1"
    assert (root / "v1" / "data.bin").read_bytes() == v1_data
    with pytest.raises(VersionNotFoundError):
        get_version(root, "v2")
    # the next writer of v2 is not in the leftover's way
    with atomic_directory(root / "v2") as tmp:
        write_json_atomic(tmp / "manifest.json", {"created_at": utc_now_iso(), "name": "v2"})
    assert latest_version(root).version == "v2"


def test_hashes(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert len(content_hash("x")) == 12
    assert content_hash("ab", "c") != content_hash("a", "bc")
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})
    before = content_hash(f)
    f.write_bytes(b"abd")
    assert content_hash(f) != before
    assert content_hash(tmp_path) == content_hash(tmp_path)


def test_list_versions_newest_first_and_complete_only(tmp_path):
    for name in ("aaa", "ccc", "bbb"):
        with atomic_directory(tmp_path / name) as tmp:
            write_json_atomic(tmp / "manifest.json", {"created_at": utc_now_iso(), "name": name})
        time.sleep(0.002)
    (tmp_path / "incomplete").mkdir()  # no manifest
    (tmp_path / ".zzz.tmp-1234").mkdir()  # a write in progress
    (tmp_path / ".zzz.tmp-1234" / "manifest.json").write_text(json.dumps({"created_at": "9999"}))
    assert [v.version for v in list_versions(tmp_path)] == ["bbb", "ccc", "aaa"]
    latest = latest_version(tmp_path)
    assert latest is not None and latest.version == "bbb" and latest.manifest["name"] == "bbb"
    assert get_version(tmp_path, "aaa").path == tmp_path / "aaa"
    assert latest_version(tmp_path / "nothing") is None
