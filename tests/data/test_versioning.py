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
