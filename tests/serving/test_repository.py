"""Writing model versions from real training exports (no server needed): layout, configs of both
flavours, the FAISS index, atomic failure, versions never overwritten, activating a version."""

from __future__ import annotations

import json
from pathlib import Path
import shutil

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as pb

from recsys.serving import repository
from recsys.serving.repository import RepositoryError

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def exports(trained_run):
    return repository.exports_from_run(trained_run["run_dir"])


@pytest.fixture(scope="module")
def vector_width(exports, trained_run) -> int:
    """The exported vectors' width: the embedding size (16), plus the popularity prior's slot when training
    chose a prior weight (retrieval_prior_weight > 0)."""
    import pyarrow.parquet as pq

    metrics = json.loads((Path(trained_run["run_dir"]) / "metrics.json").read_text())["metrics"]
    width = 16 + (metrics["retrieval_prior_weight"] > 0)
    assert len(pq.read_table(exports["item_embeddings"]).column("embedding")[0]) == width
    return width


@pytest.fixture(scope="module")
def pipeline(serving_base, trained_run):
    return repository.pipeline_from_settings(serving_base, trained_run["manifest"])


def _config(path: Path):
    return repository.read_config(path)


def _tensors(config) -> dict[str, tuple]:
    """name -> (data type, dims, optional) of a ModelConfig's inputs and outputs."""
    return {t.name: (pb.DataType.Name(t.data_type), list(t.dims), getattr(t, "optional", False))
            for t in [*config.input, *config.output]}


def test_python_flavour_layout_configs_and_index(exports, pipeline, tmp_path):
    written = repository.write_model_versions(exports, tmp_path, 3, pipeline, lineage={"feature_version": "fv"})
    assert sorted(p.parent.name for p in written) == sorted(repository.PUBLISHED_MODELS)
    assert all(p.name == "3" for p in written)
    for model in repository.PUBLISHED_MODELS:
        config = _config(tmp_path / model / "config.pbtxt")
        assert config.name == model and config.backend == "python"
        assert list(config.version_policy.specific.versions) == [3]
        assert (tmp_path / model / "3" / "model.py").exists()
        lineage = json.loads((tmp_path / model / "3" / "lineage.json").read_text())
        assert lineage["feature_version"] == "fv" and lineage["created_at"]
    ranker = _tensors(_config(tmp_path / "recsys_ranker" / "config.pbtxt"))
    for column in pipeline["user_columns"] + pipeline["item_columns"]:
        assert column in ranker
    config = _config(tmp_path / "recsys" / "config.pbtxt")
    stages = _tensors(config)
    # ids are text on the wire; a request gives a user (recommendations) or an item (similar items)
    assert stages["user_id"] == ("TYPE_STRING", [1], True) and stages["item_id"] == ("TYPE_STRING", [1], True)
    floor = _tensors(_config(repository.write_floor_model(tmp_path) / "config.pbtxt"))
    assert floor["user_id"] == ("TYPE_STRING", [1], False)  # the floor always echoes a user
    assert stages["item_ids"] == ("TYPE_STRING", [-1], False)
    assert config.parameters["item_id_kind"].string_value == "int"
    assert stages["k"] == ("TYPE_INT32", [1], True)
    assert [(g.count, pb.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [
        (pipeline["instances"], "KIND_CPU")
    ]
    # the settings frozen at publish, and the history length the exported query tower was trained with
    written = json.loads((tmp_path / "recsys" / "3" / "pipeline.json").read_text())
    assert written == json.loads(json.dumps({**pipeline, "history_length": 100})) and written["mode"] == "models"
    assert written["live"] == {"recent_items": 20, "neighbours_k": 50}  # the live layer's settings, frozen
    # no temporary folders left behind
    assert not [p for p in tmp_path.rglob(".*tmp*")]
    assert repository.model_versions(tmp_path, "recsys_floor") == [1]
    assert repository.model_versions(tmp_path, "recsys") == [3]
    assert repository.served_version(tmp_path, "recsys") == 3



def test_version_folders_are_written_complete_into_the_given_folder_without_staging(exports, pipeline, serving_base,
                                                                                   trained_run, tmp_path):
    """What publishing writes into its own staging folder: every version complete (lineage, its own config)
    and each model's config, nothing staged beside it, nothing else activated."""
    staging = tmp_path / "staging"
    models = repository.write_version_folders(exports, staging, 5, pipeline, lineage={"feature_version": "fv"})
    assert models == list(repository.PUBLISHED_MODELS)  # dependencies first
    assert sorted(p.name for p in staging.iterdir()) == sorted(models)
    for model in models:
        own = (staging / model / "5" / "config.pbtxt").read_text()
        assert own == (staging / model / "config.pbtxt").read_text()
        assert list(repository.parse_config(own).version_policy.specific.versions) == [5]
        lineage = json.loads((staging / model / "5" / "lineage.json").read_text())
        assert lineage["feature_version"] == "fv" and lineage["created_at"]
        assert lineage["model"] == model and lineage["models"] == models
    assert not list(tmp_path.glob(".*"))  # no staging of its own
    with pytest.raises(RepositoryError, match="already exists"):
        repository.write_version_folders(exports, staging, 5, pipeline)

    popular = repository.pipeline_from_settings(serving_base, trained_run["manifest"], mode="popularity")
    assert repository.write_popularity_folder(tmp_path / "popular", 2, popular) == ["recsys"]
    folder = tmp_path / "popular" / "recsys" / "2"
    assert sorted(p.name for p in folder.iterdir()) == [
        "checksums.json", "config.pbtxt", "lineage.json", "model.py", "pipeline.json"
    ]
    seal = json.loads((folder / "checksums.json").read_text())  # every other file, sealed last
    assert sorted(seal) == ["config.pbtxt", "lineage.json", "model.py", "pipeline.json"]
    assert seal["pipeline.json"]["size"] == (folder / "pipeline.json").stat().st_size
    assert repository.served_version(tmp_path / "popular", "recsys") == 2


def test_tensorflow_flavour_writes_native_savedmodel_configs(exports, pipeline, vector_width, tmp_path):
    """For GPU hosts with Triton's TF backend; the pip-installed Triton here cannot load these."""
    repository.write_model_versions(exports, tmp_path, 1, pipeline, flavour="tensorflow")
    for model in ("recsys_query_tower", "recsys_ranker"):
        config = _config(tmp_path / model / "config.pbtxt")
        assert config.platform == "tensorflow_savedmodel" and not config.backend
        assert (tmp_path / model / "1" / "model.savedmodel" / "saved_model.pb").exists()
        assert not (tmp_path / model / "1" / "model.py").exists()
    tower = _tensors(_config(tmp_path / "recsys_query_tower" / "config.pbtxt"))
    assert tower["output_1"] == ("TYPE_FP32", [-1, vector_width], False)  # the query meets the items
    assert tower["user_id"] == ("TYPE_INT64", [-1], False)
    ranker = _tensors(_config(tmp_path / "recsys_ranker" / "config.pbtxt"))
    assert ranker["click/binary_output"] == ("TYPE_FP32", [-1, 1], False)
    # the four stages and the index stay python models
    assert _config(tmp_path / "recsys" / "config.pbtxt").backend == "python"


def test_index_files(exports, pipeline, vector_width, tmp_path):
    import pyarrow.parquet as pq

    repository.write_model_versions(exports, tmp_path, 1, pipeline, prior_slot=True)
    index_dir = tmp_path / "recsys_item_index" / "1" / "index"
    meta = json.loads((index_dir / "index.json").read_text())
    table = pq.read_table(exports["item_embeddings"])
    assert meta["kind"] == "flat" and meta["items"] == table.num_rows and meta["dim"] == vector_width
    assert meta["prior_slot"] is True  # the vectors' layout travels with them (both copies of the index)
    assert json.loads((tmp_path / "recsys" / "1" / "index" / "index.json").read_text()) == meta
    assert np.load(index_dir / "item_ids.npy").tolist() == table.column("item_id_raw").to_pylist()
    assert (tmp_path / "recsys" / "1" / "index" / "items.faiss").read_bytes() == (index_dir / "items.faiss").read_bytes()


def test_ivf_index_when_asked(exports, pipeline, tmp_path):
    repository.write_model_versions(exports, tmp_path, 1, {**pipeline, "faiss_index": "ivf"})
    meta = json.loads((tmp_path / "recsys_item_index" / "1" / "index" / "index.json").read_text())
    assert meta["kind"] == "ivf" and meta["nlist"] >= 1 and meta["nprobe"] >= 1


def test_versions_are_never_overwritten_and_activate_switches(exports, pipeline, tmp_path):
    repository.write_model_versions(exports, tmp_path, 1, pipeline)
    repository.write_model_versions(exports, tmp_path, 2, pipeline)
    assert repository.served_version(tmp_path, "recsys") == 2
    with pytest.raises(RepositoryError, match="already exists"):
        repository.write_model_versions(exports, tmp_path, 2, pipeline)
    repository.activate_version(tmp_path, "recsys", 1)
    assert repository.served_version(tmp_path, "recsys") == 1
    with pytest.raises(RepositoryError, match="version 7"):
        repository.activate_version(tmp_path, "recsys", 7)


def test_a_failure_leaves_nothing_half_written(exports, pipeline, tmp_path):
    broken = dict(exports)
    bad_dir = tmp_path / "bad-tower"
    shutil.copytree(exports["query_tower"], bad_dir)
    (bad_dir / ".merlin" / "output_schema.json").write_text(json.dumps({"feature": [{"name": "x", "type": "STRING"}]}))
    broken["query_tower"] = bad_dir
    repo = tmp_path / "repo"
    with pytest.raises(RepositoryError):
        repository.write_model_versions(broken, repo, 1, pipeline)
    assert not [p for p in repo.rglob("*") if p.is_dir() and p.name[0].isdigit()]
    assert not list(repo.rglob("config.pbtxt"))
    assert not [p for p in repo.rglob(".*")]


def test_missing_exports_are_named(tmp_path):
    with pytest.raises(RepositoryError, match="saved_model.pb"):
        repository.exports_from_run(tmp_path)


def test_dynamic_batching_is_on_by_default_and_a_negative_delay_turns_it_off():
    from recsys.settings import load_settings

    assert load_settings({}).triton_batch_delay_us == 0
    manifest = {"feature_version": "fv", "columns": {}}
    on = repository.pipeline_from_settings(load_settings({}), manifest)
    assert on["batch_delay_us"] == 0
    config = repository.four_stage_config(2, 1, on["batch_delay_us"])
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    off = repository.pipeline_from_settings(load_settings({"RECSYS_TRITON_BATCH_DELAY_US": "-1"}), manifest)
    assert off["batch_delay_us"] is None
    for delay in (None, -1):
        config = repository.four_stage_config(2, 1, delay)
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        text = repository.config_text(config)  # what Triton reads: the same message back
        assert repository.parse_config(text) == config and "dynamic_batching" not in text


def test_pipeline_records_the_id_kinds_and_parses_boosts_into_the_item_kind():
    from recsys.errors import ConfigError
    from recsys.settings import load_settings

    text = {"feature_version": "fv", "columns": {}, "ids": {"user_id": "string", "item_id": "string"}}
    boosted = load_settings({"RECSYS_BOOSTS": "SKU-85123A=1.5"})
    pipeline = repository.pipeline_from_settings(boosted, text)
    assert pipeline["ids"] == text["ids"] and pipeline["ordering"]["boosts"] == {"SKU-85123A": 1.5}
    config = repository.four_stage_config(1, 1, 0, pipeline["ids"])
    assert config.parameters["user_id_kind"].string_value == "string"
    assert config.parameters["item_id_kind"].string_value == "string"
    ints = {"feature_version": "fv", "columns": {}}  # a manifest written before kinds were recorded: int
    assert repository.pipeline_from_settings(load_settings({}), ints)["ids"] == {"user_id": "int", "item_id": "int"}
    with pytest.raises(ConfigError, match="RECSYS_BOOSTS.*item_id 'SKU-85123A' is not an integer id"):
        repository.pipeline_from_settings(boosted, ints)


def test_clients_read_the_served_contract_from_either_config_form():
    from recsys.serving.client import contract_of_config

    grpc_json = {
        "max_batch_size": 64,
        "input": [{"name": "user_id", "data_type": "TYPE_STRING", "dims": ["1"]}],
        "parameters": {"user_id_kind": {"string_value": "string"}, "item_id_kind": {"string_value": "int"}},
    }
    contract = contract_of_config(grpc_json)
    assert contract.batched and contract.user_id_type == "BYTES"
    assert contract.id_kinds.to_dict() == {"user_id": "string", "item_id": "int"}
    # a version published before ids were text (a rollback may serve it): INT64 requests, int ids
    legacy = contract_of_config({"max_batch_size": 0, "input": [{"name": "user_id", "data_type": "TYPE_INT64"}]})
    assert not legacy.batched and legacy.user_id_type == "INT64" and legacy.id_kinds.to_dict()["item_id"] == "int"
    # similar items: only a config with the item_id input serves them; an older one is a clear error
    assert not contract.similar and not legacy.similar
    now = contract_of_config({**grpc_json, "input": [*grpc_json["input"], {"name": "item_id", "data_type": "TYPE_STRING"}]})
    assert now.similar


def test_similar_requests_follow_the_served_contract():
    import tritonclient.grpc as grpcclient

    from recsys.serving.client import ServedContract, similar_inputs
    from recsys.serving.control import ServingError

    batched = similar_inputs(grpcclient, "SKU-1", 5, contract=ServedContract(True, similar=True))
    assert [(t.name(), t.shape(), t.datatype()) for t in batched] == [("item_id", [1, 1], "BYTES"), ("k", [1, 1], "INT32")]
    plain = similar_inputs(grpcclient, 12, contract=ServedContract(False, similar=True))
    assert [(t.name(), t.shape()) for t in plain] == [("item_id", [1])]
    with pytest.raises(ServingError, match="published before similar items existed; publish again"):
        similar_inputs(grpcclient, 12, contract=ServedContract(True))


def test_the_prior_slot_follows_the_runs_prior_weight():
    from recsys.serving.index import prior_slot_of

    assert prior_slot_of({"retrieval_prior_weight": 0.25}) and not prior_slot_of({"retrieval_prior_weight": 0.0})
    assert not prior_slot_of({}) and not prior_slot_of(None)  # a run from before the prior: no slot
