"""recover_interrupted: a publish or rollback killed between its first change on disk and its history
record leaves the repository ahead of its history; the history decides what the repository serves.
(Pure file system: what Triton then loads follows from the configs, tests/faults/test_killed_tasks.py
shows it with a real one.)"""

from __future__ import annotations

from pathlib import Path

from recsys.layout import TritonRepository
from recsys.serving import history
from recsys.serving.publish import recover_interrupted

MODELS = ["recsys_item_index", "recsys"]


def _version(repo: TritonRepository, model: str, version: int, active: bool = True) -> None:
    folder = repo.version_dir(model, version)
    folder.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(f'name: "{model}"\nversion_policy {{ specific {{ versions: {version} }} }}\n')
    (folder / "lineage.json").write_text("{}")
    if active:
        repo.config(model).write_text(repo.version_config(model, version).read_text())


def _record(repo: TritonRepository, action: str, version: int, status: str = "serving") -> None:
    history.append_entry(repo, {"action": action, "version": version, "models": MODELS, "status": status})


def _serves(repo: TritonRepository, model: str) -> str:
    return repo.config(model).read_text().split("versions: ")[1].split(" ")[0]


def test_a_publish_killed_after_moving_its_version_in_is_removed(tmp_path: Path):
    repo = TritonRepository(tmp_path / "repo")
    for model in MODELS:
        _version(repo, model, 1)
    _record(repo, "publish", 1)
    for model in MODELS:  # the killed publish: version 2 moved in and activated, never recorded
        _version(repo, model, 2)
    _version(repo, "recsys_floor", 1)  # not a model publishing manages: left alone

    changes = recover_interrupted(repo)

    assert sorted(c for c in changes if c.startswith("removed")) == [
        "removed recsys/2 (never recorded as serving)", "removed recsys_item_index/2 (never recorded as serving)"]
    for model in MODELS:
        assert repo.versions(model) == [1] and _serves(repo, model) == "1"
    assert repo.versions("recsys_floor") == [1]
    last = history.read_history(repo)[-1]
    assert (last["action"], last["version"], last["status"]) == ("publish", 2, "interrupted")
    assert history.next_version(repo) == 3  # the killed try's number is never given again
    assert history.served(repo)["version"] == 1
    assert recover_interrupted(repo) == []  # a repository that agrees with its history is left as it is


def test_a_failed_attempts_number_and_a_healthy_repository_are_left_alone(tmp_path: Path):
    repo = TritonRepository(tmp_path / "repo")
    for model in MODELS:
        _version(repo, model, 1)
    _record(repo, "publish", 1)
    _record(repo, "publish", 2, status="failed")  # a failed publish removed its folders itself
    before = {p: p.read_bytes() for p in repo.path.rglob("*") if p.is_file()}
    assert recover_interrupted(repo) == []
    assert {p: p.read_bytes() for p in repo.path.rglob("*") if p.is_file()} == before


def test_a_rollback_killed_after_moving_the_served_version_aside_brings_it_back(tmp_path: Path):
    repo = TritonRepository(tmp_path / "repo")
    for version in (1, 2, 3):
        for model in MODELS:
            _version(repo, model, version)
        _record(repo, "publish", version)
    for model in MODELS:  # the killed rollback to 1: versions 2 and 3 moved aside, 1 activated
        for newer in (2, 3):
            (repo.rolled_back / model).mkdir(parents=True, exist_ok=True)
            repo.version_dir(model, newer).rename(repo.rolled_back / model / f"{newer}-20261207T050000")
        repo.config(model).write_text(repo.version_config(model, 1).read_text())

    changes = recover_interrupted(repo)

    for model in MODELS:
        assert repo.versions(model) == [1, 3] and _serves(repo, model) == "3"
        assert f"{model}'s config on version 3 again" in changes
        assert [p.name for p in (repo.rolled_back / model).iterdir()] == ["2-20261207T050000"]  # never served: stays aside
    assert [(e["action"], e["status"]) for e in history.read_history(repo)][-1] == ("rollback", "interrupted")
    assert history.served(repo)["version"] == 3


def test_the_lock_can_be_asked_for_without_waiting(tmp_path: Path):
    repo = TritonRepository(tmp_path / "repo")
    with history.publish_lock(repo) as held:
        assert held
        with history.publish_lock(repo, wait=False) as second:
            assert second is False  # a publish is alive: Triton's start does not touch its repository
    with history.publish_lock(repo, wait=False) as third:
        assert third is True
