"""Corrupted artifacts never serve: each is refused with the file named, and the version that served
before keeps serving.

- a byte flipped in a champion's SavedModel in MLflow's artifact store: publishing refuses at download
  (:mod:`recsys.tracking.artifacts`, the run's ``checksums.json``), the Triton repository is untouched;
- a truncated FAISS index in a version folder of the repository, loaded again by a rollback: the
  item index model verifies its folder against the seal written with it
  (:func:`recsys.serving.repository.verified_version_dir`), Triton's log and the rollback's error
  name the file, and the version that served is put back. A restarted Triton loading such a version
  goes through the same check;
- half-written parquet parts in the landing folder are never read: tests/data/test_ingest.py
  (``test_hidden_and_underscore_files_in_the_parts_folder_are_never_read``,
  ``test_a_part_renamed_into_place_during_ingest_waits_for_the_next_one``).

A Triton of its own (its own home, repository and ports), shared by the tests of this module; each test
empties its repository first.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from recsys.settings import Settings, replace
from shared_helpers import running_triton, triton_ports

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serving_helpers import ToyWriter, ask, fresh_publish_settings, log_champion_run, smoke  # noqa: E402

DIM = 8


@pytest.fixture(scope="module")
def own_triton(stack_settings, tmp_path_factory):
    s = replace(stack_settings, home=tmp_path_factory.mktemp("corrupted-home"), **triton_ports())
    with running_triton(s):
        yield s


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_flipped_byte_in_the_champions_artifacts_is_refused_and_nothing_changes(own_triton, stack_settings, tmp_path):
    from recsys.serving.publish import publish
    from recsys.stack.mlflow import MlflowService
    from recsys.tracking.artifacts import ArtifactError

    s, tag = fresh_publish_settings(own_triton)
    writer = ToyWriter(f"a{tag}")
    log_champion_run(s, "fv1", 0.5, tmp=tmp_path, record_checksums=True)
    assert publish(writer=writer, smoke_test=smoke(writer.models), settings=s).version == 1
    before = _tree(s.triton_repo)

    run_id = log_champion_run(s, "fv1", 0.6, tmp=tmp_path, record_checksums=True)  # the new champion
    store = MlflowService(stack_settings).directory / "artifacts"
    (stored,) = [p for p in store.rglob("saved_model.pb") if f"{run_id}/artifacts/ranking/dlrm" in p.as_posix()]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    stored.write_bytes(bytes(data))

    with pytest.raises(ArtifactError, match=r"ranking/dlrm/saved_model.pb: sha256 \S+ does not match checksums.json"):
        publish(writer=writer, smoke_test=smoke(writer.models), settings=s)
    assert writer.seen_exports and len(writer.seen_exports) == 1  # the writer never saw the altered files
    assert _tree(s.triton_repo) == before  # not a byte changed in the repository (history included)
    for model in writer.models:
        assert ask(s, model) == 101


class IndexWriter:
    """A repository writer of the real item index model alone (``recsys_item_index``), its FAISS index
    built once by the Merlin interpreter from ``embeddings`` and copied into each version."""

    def __init__(self, embeddings: Path, built: Path):
        self.embeddings, self.built = embeddings, built

    def __call__(self, exports: Path, staging: Path, version: int, settings: Settings, lineage: dict) -> list[str]:
        from recsys.serving import schema
        from recsys.serving.index import build_index
        from recsys.serving.repository import ITEM_INDEX, MODELS_DIR, TensorSpec, config_text, model_config

        if not self.built.exists():
            self.built.mkdir()
            build_index(self.embeddings, self.built, "flat", python=settings.merlin_python)
        folder = staging / ITEM_INDEX / str(version)
        shutil.copytree(self.built, folder / "index")
        shutil.copy2(MODELS_DIR / ITEM_INDEX / "model.py", folder / "model.py")
        query = TensorSpec("query", "TYPE_FP32", (1, DIM))
        config = model_config(ITEM_INDEX, [query, schema.K], [schema.ITEM_IDS, schema.SCORES], version=version)
        (staging / ITEM_INDEX / "config.pbtxt").write_text(config_text(config))
        return [ITEM_INDEX]


def _nearest(s: Settings) -> list[str]:
    """The item index's answer for one query (the items nearest to the first axis)."""
    import tritonclient.http as httpclient

    from recsys.serving.repository import ITEM_INDEX
    from recsys.serving.triton_client import http_client

    query = httpclient.InferInput("query", [1, DIM], "FP32")
    query.set_data_from_numpy(np.eye(1, DIM, dtype=np.float32))
    return [i.decode() for i in http_client(s).infer(ITEM_INDEX, [query]).as_numpy("item_ids")[:3]]


def test_a_truncated_index_in_the_repository_is_refused_at_load_and_the_served_version_stays(own_triton, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.layout import TritonRepository
    from recsys.serving.control import model_ready
    from recsys.serving.history import read_history, served
    from recsys.serving.publish import PublishError, publish, rollback
    from recsys.serving.repository import ITEM_INDEX, model_versions
    from recsys.stack.triton import TritonService

    s, _tag = fresh_publish_settings(own_triton)
    embeddings = tmp_path / "item_embeddings.parquet"
    vectors = np.random.default_rng(0).normal(size=(50, DIM)).astype(np.float32)
    pq.write_table(pa.table({"item_id": np.arange(50), "item_id_raw": np.arange(1000, 1050),
                             "embedding": list(vectors)}), embeddings)
    writer = IndexWriter(embeddings, tmp_path / f"built-{uuid.uuid4().hex[:6]}")

    def check(settings, versions, lineage):  # the smoke test: the index answers
        return {"nearest": _nearest(settings)}

    for quality in (0.5, 0.6):  # versions 1 and 2; 2 serves
        log_champion_run(s, "fv1", quality, tmp=tmp_path)
        publish(writer=writer, smoke_test=check, settings=s)
    answer = _nearest(s)
    repo = TritonRepository(s.triton_repo)
    truncated = repo.version_dir(ITEM_INDEX, 1) / "index" / "items.faiss"
    size = truncated.stat().st_size
    with open(truncated, "r+b") as handle:  # what a full disk or a killed copy leaves
        handle.truncate(size // 2)

    with pytest.raises(PublishError) as refused:
        rollback(to_version=1, reason="fault test", smoke_test=check, settings=s)
    message = str(refused.value)
    assert "rollback to version 1 failed, version 2 was put back" in message, message
    assert f"{truncated}: {size // 2} bytes, sealed with {size}" in message, message
    assert f"the previous version serves ({ITEM_INDEX} v2)" in message, message
    assert f"{truncated}: {size // 2} bytes, sealed with {size}" in TritonService(s).processes[0].log_file.read_text()

    # Version 2 serves on, and is what the repository serves at the next start; nothing was moved aside.
    assert model_ready(s, ITEM_INDEX, 2) and not model_ready(s, ITEM_INDEX, 1)
    assert _nearest(s) == answer
    assert model_versions(s.triton_repo, ITEM_INDEX) == [1, 2]
    assert repo.config(ITEM_INDEX).read_bytes() == repo.version_config(ITEM_INDEX, 2).read_bytes()
    assert not [p for p in repo.rolled_back.rglob("*") if p.is_file()] if repo.rolled_back.exists() else True
    assert [(h["action"], h["version"], h["status"]) for h in read_history(s.triton_repo)] == [
        ("publish", 1, "serving"), ("publish", 2, "serving"), ("rollback", 1, "failed")]
    assert served(s.triton_repo)["version"] == 2
