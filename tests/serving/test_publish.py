"""Publishing MLflow champions to a real Triton: serve, refuse a broken version, lineage, no-op, rollback.

Real services: the MLflow and Redis of ``stack_settings`` and a real ``tritonserver`` (the embedded
Triton service). The models here are tiny python-backend models written by a test repository writer
(the publishing mechanics do not depend on what the models compute): ``<prefix>_index`` and
``<prefix>_stages`` answer ``y = x + <their Triton version>``, so a request shows which version serves.
"""

from __future__ import annotations

import json

import pytest

from recsys.settings import get_settings, replace
from serving_helpers import ToyWriter, ask, fresh_publish_settings, log_champion_run, smoke
from shared_helpers import patched_environ, running_triton, triton_ports_env


@pytest.fixture(scope="module")
def triton_settings(stack_settings, tmp_path_factory):
    """The stack plus a real Triton (explicit model control) on free ports, with its own repository."""
    env = {**triton_ports_env(), "RECSYS_TRITON_REPOSITORY": str(tmp_path_factory.mktemp("publish-repository"))}
    with patched_environ(env), running_triton(get_settings()) as s:
        yield s


@pytest.fixture
def fresh(triton_settings, tmp_path):
    """Per test: an empty repository (every model unloaded) and registered model names of its own."""
    s, tag = fresh_publish_settings(triton_settings)
    return s, tag, tmp_path


def test_publish_serves_records_lineage_and_is_idempotent(fresh):
    from mlflow import MlflowClient

    from recsys.serving.history import read_history
    from recsys.serving.publish import publish

    s, tag, tmp = fresh
    run_id = log_champion_run(s, "fv1", 0.5, tmp=tmp)
    writer = ToyWriter(f"p{tag}")

    result = publish(writer=writer, smoke_test=smoke(writer.models), settings=s, airflow_run="recsys_publish/run-1")
    assert result.published and result.version == 1
    assert result.models == writer.models
    for model in writer.models:
        assert ask(s, model) == 101
    # The verified exports the writer was given: both champions' folders and the workflows.
    assert "retrieval/query_tower/saved_model.pb" in writer.seen_exports[0]
    assert "ranking/dlrm/saved_model.pb" in writer.seen_exports[0]
    assert "workflows/user/workflow.pkl" in writer.seen_exports[0]

    # Lineage in the repository ...
    lineage = json.loads((s.triton_repo / writer.models[0] / "1" / "lineage.json").read_text())
    assert lineage["champions"]["retrieval"]["name"] == s.retrieval_model_name
    assert lineage["champions"]["ranking"]["run_id"] == run_id
    assert lineage["feature_version"] == "fv1" and lineage["airflow_run"] == "recsys_publish/run-1"
    assert lineage["artifacts_sha256"]["ranking/dlrm/saved_model.pb"]
    assert (s.triton_repo / writer.models[0] / "1" / "config.pbtxt").exists()
    history = read_history(s.triton_repo)
    assert [(h["action"], h["version"], h["status"]) for h in history] == [("publish", 1, "serving")]
    assert history[0]["champions"] == {s.retrieval_model_name: "1", s.ranking_model_name: "1"}
    # ... and on the MLflow model versions.
    client = MlflowClient(s.mlflow_uri)
    for name in (s.retrieval_model_name, s.ranking_model_name):
        tags = client.get_model_version(name, "1").tags
        assert tags["triton.version"] == "1"
        assert tags["airflow.run"] == "recsys_publish/run-1"
        assert tags["triton.published_at"]

    # The same champions again: nothing is written, nothing reloaded.
    again = publish(writer=writer, smoke_test=smoke(writer.models), settings=s)
    assert not again.published and again.version == 1 and "already" in again.reason
    assert len(writer.seen_exports) == 1 and len(read_history(s.triton_repo)) == 1

    # Forced: a new number with the same champions.
    forced = publish(writer=writer, smoke_test=smoke(writer.models), settings=s, force=True)
    assert forced.published and forced.version == 2 and ask(s, writer.models[1]) == 102


def test_broken_version_is_refused_and_the_old_one_keeps_serving(fresh):
    from mlflow import MlflowClient

    from recsys.serving.history import read_history
    from recsys.serving.publish import PublishError, publish
    from recsys.serving.repository import model_versions

    s, tag, tmp = fresh
    log_champion_run(s, "fv1", 0.5, tmp=tmp)
    good = ToyWriter(f"b{tag}")
    assert publish(writer=good, smoke_test=smoke(good.models), settings=s).version == 1

    log_champion_run(s, "fv1", 0.9, tmp=tmp)  # a better model: new champions (version 2 of each)
    broken = ToyWriter(f"b{tag}", broken=True)
    with pytest.raises(PublishError, match=r"version 2 failed.*previous version serves.*broken model version"):
        publish(writer=broken, smoke_test=smoke(broken.models), settings=s)

    # The first model's version 2 DID load before the second failed: it was reloaded back to 1.
    for model in good.models:
        assert ask(s, model) == 101
        assert model_versions(s.triton_repo, model) == [1]
        assert "raise" not in (s.triton_repo / model / "config.pbtxt").read_text()
    assert not any(p.name.startswith(".") and "tmp" in p.name for p in s.triton_repo.rglob("*"))
    assert [h["status"] for h in read_history(s.triton_repo)] == ["serving", "failed"]
    # MLflow still says the old versions serve; the new champions carry no Triton tag.
    client = MlflowClient(s.mlflow_uri)
    assert client.get_model_version(s.retrieval_model_name, "1").tags["triton.version"] == "1"
    assert "triton.version" not in client.get_model_version(s.retrieval_model_name, "2").tags

    # Fixed writer: publishing works again, under a number never used before (3: 2 was the failed try).
    fixed = publish(writer=good, smoke_test=smoke(good.models), settings=s)
    assert fixed.version == 3 and ask(s, good.models[1]) == 103


def test_first_publish_that_fails_leaves_nothing(fresh):
    from recsys.serving.publish import PublishError, publish

    s, tag, tmp = fresh
    log_champion_run(s, "fv1", 0.5, tmp=tmp)
    broken = ToyWriter(f"f{tag}", broken=True)
    with pytest.raises(PublishError, match="nothing was serving before"):
        publish(writer=broken, smoke_test=smoke(broken.models), settings=s)
    assert not any((s.triton_repo / m).exists() for m in broken.models)


def test_altered_artifact_is_refused_before_anything_is_written(fresh):
    from recsys.serving.history import read_history
    from recsys.serving.publish import publish
    from recsys.tracking.artifacts import ArtifactError

    s, tag, tmp = fresh
    checksums = {"ranking/dlrm/saved_model.pb": "0" * 64}  # what the run recorded; the file differs
    log_champion_run(s, "fv1", 0.5, checksums=checksums, tmp=tmp)
    writer = ToyWriter(f"c{tag}")
    with pytest.raises(ArtifactError, match=r"ranking/dlrm/saved_model.pb: sha256 .* does not match checksums.json"):
        publish(writer=writer, smoke_test=smoke(writer.models), settings=s)
    assert writer.seen_exports == []  # the writer never saw unverified files
    assert list(s.triton_repo.iterdir()) == [] and read_history(s.triton_repo) == []


def test_champions_from_different_feature_versions_are_refused(fresh):
    from mlflow import MlflowClient

    from recsys.serving.publish import PublishError, publish

    s, tag, tmp = fresh
    log_champion_run(s, "fv1", 0.5, tmp=tmp)
    log_champion_run(s, "fv2", 0.4, tmp=tmp)  # worse: challenger only
    MlflowClient(s.mlflow_uri).set_registered_model_alias(s.ranking_model_name, "champion", "2")  # by hand
    with pytest.raises(PublishError, match="not trained on one feature version"):
        publish(writer=ToyWriter(f"d{tag}"), settings=s)


def test_a_plan_whose_champion_moved_is_refused_and_nothing_changes(fresh):
    from recsys.serving.history import read_history
    from recsys.serving.plan import PublishPlan
    from recsys.serving.publish import PublishError, publish

    s, tag, tmp = fresh
    log_champion_run(s, "fv1", 0.5, tmp=tmp)
    writer = ToyWriter(f"m{tag}")
    planned = PublishPlan.from_dict(PublishPlan.resolve(s).to_dict())  # as recsys_publish's plan task hands it on
    assert publish(writer=writer, smoke_test=smoke(writer.models), settings=s, plan=planned).version == 1
    log_champion_run(s, "fv1", 0.6, tmp=tmp)  # a better run takes the alias after the plan was made
    with pytest.raises(PublishError, match=r"the champion moved since this publish was planned.*nothing was published"):
        publish(writer=writer, smoke_test=smoke(writer.models), settings=s, plan=planned, force=True)
    assert [h["version"] for h in read_history(s.triton_repo)] == [1]
    assert writer.seen_exports and len(writer.seen_exports) == 1  # nothing was downloaded for the refused plan
    assert publish(writer=writer, smoke_test=smoke(writer.models), settings=s).version == 2  # a fresh plan publishes


def test_rollback_serves_the_previous_version_and_prune_keeps_a_few(fresh):
    from recsys.serving.history import read_history, served
    from recsys.serving.publish import PublishError, publish, rollback
    from recsys.serving.repository import model_versions

    s = replace(fresh[0], triton_keep_versions=2)
    tag, tmp = fresh[1], fresh[2]
    writer = ToyWriter(f"r{tag}")
    for quality in (0.5, 0.6, 0.7):  # three champions in turn: versions 1, 2, 3
        log_champion_run(s, "fv1", quality, tmp=tmp)
        publish(writer=writer, smoke_test=smoke(writer.models), settings=s, airflow_run=f"run-{quality}")
    assert model_versions(s.triton_repo, writer.models[0]) == [2, 3]  # 1 pruned
    assert ask(s, writer.models[0]) == 103

    result = rollback(reason="bad clicks", smoke_test=smoke(writer.models), settings=s)
    assert result.version == 2 and result.champions == {s.retrieval_model_name: "2", s.ranking_model_name: "2"}
    for model in writer.models:
        assert ask(s, model) == 102
        assert model_versions(s.triton_repo, model) == [2]
    assert served(s.triton_repo)["action"] == "rollback" and served(s.triton_repo)["from"] == 3
    with pytest.raises(PublishError, match="cannot roll back"):
        rollback(smoke_test=smoke(writer.models), settings=s)  # nothing older is kept

    # Publishing afterwards brings the champions back under a new number.
    again = publish(writer=writer, smoke_test=smoke(writer.models), settings=s)
    assert again.version == 4 and ask(s, writer.models[1]) == 104
    assert [h["action"] for h in read_history(s.triton_repo)] == ["publish"] * 3 + ["rollback", "publish"]


def test_publish_pins_the_new_feature_version_before_loading_and_releases_the_old_one_once_it_serves(fresh):
    """The online store keeps what served models read: the old feature version stays pinned until the
    new models serve; a failed publish leaves the old pin and removes the new one; rollback re-pins."""
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.serving.publish import PublishError, publish, rollback

    s, tag, tmp = fresh
    store = RedisOnlineStore.from_settings(s)
    writer, broken = ToyWriter(f"n{tag}"), ToyWriter(f"n{tag}", broken=True)
    pins_while_loading: list[dict] = []

    def smoke_recording_pins(settings, versions, lineage):
        pins_while_loading.append(store.pins())  # called after the new models loaded, before they serve
        return smoke(writer.models)(settings, versions, lineage)

    log_champion_run(s, "fvA", 0.5, tmp=tmp)
    publish(writer=writer, smoke_test=smoke_recording_pins, settings=s)
    assert pins_while_loading[-1] == {"fvA": "triton v1 publishing"}
    assert store.pins() == {"fvA": "triton v1 serving"}

    log_champion_run(s, "fvB", 0.6, tmp=tmp)  # new champions trained on a new feature version
    publish(writer=writer, smoke_test=smoke_recording_pins, settings=s)
    assert pins_while_loading[-1] == {"fvA": "triton v1 serving", "fvB": "triton v2 publishing"}
    assert store.pins() == {"fvB": "triton v2 serving"}

    log_champion_run(s, "fvC", 0.7, tmp=tmp)  # fails to load: fvC unpinned again, fvB untouched
    with pytest.raises(PublishError, match="version 3 failed"):
        publish(writer=broken, smoke_test=smoke(broken.models), settings=s)
    assert store.pins() == {"fvB": "triton v2 serving"}
    log_champion_run(s, "fvB", 0.8, tmp=tmp)  # same feature version fails: its pin keeps its reason
    with pytest.raises(PublishError, match="version 4 failed"):
        publish(writer=broken, smoke_test=smoke(broken.models), settings=s)
    assert store.pins() == {"fvB": "triton v2 serving"}

    # rollback to version 1 (fvA): fvA pinned before its models load, fvB released once they serve
    result = rollback(to_version=1, smoke_test=smoke_recording_pins, settings=s)
    assert result.version == 1 and ask(s, writer.models[0]) == 101
    assert pins_while_loading[-1] == {"fvB": "triton v2 serving", "fvA": "triton v1 rolling back"}
    assert store.pins() == {"fvA": "triton v1 serving"}
    store.client.close()


def test_a_full_disk_while_writing_a_version_is_a_clear_error_and_the_old_version_keeps_serving(fresh):
    """A real file-size limit (RLIMIT_FSIZE of this process, lowered while the second version's files are
    written): every write beyond 64 bytes fails as on a full disk. The error names the repository and
    says nothing changed; no version folder, staging folder or history record is left of it."""
    import resource

    from recsys.data.versioning import StorageError
    from recsys.layout import TritonRepository
    from recsys.serving.history import read_history
    from recsys.serving.publish import publish
    from recsys.serving.repository import model_versions

    s, tag, tmp = fresh
    writer = ToyWriter(f"f{tag}")
    log_champion_run(s, "fv1", 0.5, tmp=tmp)
    publish(writer=writer, smoke_test=smoke(writer.models), settings=s, airflow_run="run-1")
    log_champion_run(s, "fv1", 0.6, tmp=tmp)  # a better champion: version 2 to write

    def writer_on_a_full_disk(*args, **kwargs):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))
        try:
            return writer(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    with pytest.raises(StorageError, match=rf"could not write {s.triton_repo}.*File too large.*nothing was changed"):
        publish(writer=writer_on_a_full_disk, smoke_test=smoke(writer.models), settings=s, airflow_run="run-2")
    for model in writer.models:
        assert model_versions(s.triton_repo, model) == [1]
        assert ask(s, model) == 101
    assert [h["version"] for h in read_history(s.triton_repo)] == [1]
    staging = TritonRepository(s.triton_repo).staging_root
    assert not staging.exists() or not any(staging.iterdir())
