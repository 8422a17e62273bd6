"""Helpers of the publishing tests (tests/serving, tests/faults): tiny python-backend models written by a
test repository writer (the publishing mechanics do not depend on what the models compute).

- ``ToyWriter``: ``<prefix>_index`` and ``<prefix>_stages`` answer ``y = x + <their Triton version>``, so a
  request shows which version serves (``ask``); ``smoke``: a smoke test checking exactly that;
- ``log_champion_run``: a training run with tiny fake exports logged to MLflow and gated;
- ``fresh_publish_settings``: an emptied repository of a running Triton and names of a test's own.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import numpy as np

from recsys.settings import Settings, replace
from shared_helpers import fake_exports, log_training

GOOD_MODEL = textwrap.dedent(
    """
    import json
    from pathlib import Path

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.version = int(args["model_version"])
            here = Path(args["model_repository"]) / args["model_version"]
            self.lineage = json.loads((here / "lineage.json").read_text())  # written by publish
            {extra}

        def execute(self, requests):
            out = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (x + self.version).astype(np.int64))]))
            return out
    """
)

CONFIG = textwrap.dedent(
    """
    name: "{name}"
    backend: "python"
    max_batch_size: 0
    input [ {{ name: "x" data_type: TYPE_INT64 dims: [ 1 ] }} ]
    output [ {{ name: "y" data_type: TYPE_INT64 dims: [ 1 ] }} ]
    instance_group [ {{ kind: KIND_CPU count: 1 }} ]
    """
)


class ToyWriter:
    """A repository writer: two python-backend models; ``broken`` makes the second one raise at initialize,
    ``stages_init`` runs there instead (e.g. a slow load)."""

    def __init__(self, prefix: str, broken: bool = False, stages_init: str = "pass"):
        self.prefix = prefix
        self.broken = broken
        self.stages_init = stages_init  # python run when the second model initializes (one line)
        self.seen_exports: list[list[str]] = []

    @property
    def models(self) -> list[str]:
        return [f"{self.prefix}_index", f"{self.prefix}_stages"]

    def __call__(self, exports: Path, staging: Path, version: int, settings: Settings, lineage: dict) -> list[str]:
        self.seen_exports.append(sorted(p.relative_to(exports).as_posix() for p in exports.rglob("*") if p.is_file()))
        for name in self.models:
            extra = "pass"
            if name.endswith("_stages"):
                extra = "raise RuntimeError('broken model version')" if self.broken else self.stages_init
            (staging / name / str(version)).mkdir(parents=True)
            (staging / name / str(version) / "model.py").write_text(GOOD_MODEL.format(extra=extra))
            (staging / name / "config.pbtxt").write_text(CONFIG.format(name=name))
        return self.models


def ask(s: Settings, model: str, x: int = 100) -> int:
    import tritonclient.http as httpclient

    from recsys.serving.triton_client import http_client

    value = httpclient.InferInput("x", [1], "INT64")
    value.set_data_from_numpy(np.array([x], dtype=np.int64))
    return int(http_client(s).infer(model, [value]).as_numpy("y")[0])


def smoke(models: list[str]):
    """A smoke test for the toy models: each answers x + its new version."""

    def check(s, versions, lineage):
        for model, version in versions.items():
            got = ask(s, model)
            assert got == 100 + version, f"{model} answered {got}, expected {100 + version}"
        return {"checked": sorted(versions)}

    return check


def log_champion_run(s: Settings, feature_version: str, quality: float, checksums: dict | None = None, tmp: Path | None = None,
                     record_checksums: bool = False) -> str:
    """A training run with the exports' files (tiny fake bytes) logged to MLflow, then the champion gate.
    ``checksums``: the run's ``checksums.json`` as given; ``record_checksums``: the true one, as training writes it."""
    from recsys.tracking import registry
    from recsys.tracking.artifacts import write_checksums

    out = fake_exports(tmp / uuid.uuid4().hex[:8], str(quality))
    if checksums is not None:
        (out / "checksums.json").write_text(json.dumps(checksums))
    elif record_checksums:
        write_checksums(out)
    metrics = {"recall_at_10": quality, "pipeline_recall_at_10": quality, "auc": quality, "popularity_recall_at_10": 0.01}
    tags = {}
    champion = registry.champions(s)[s.retrieval_model_name]
    if champion is not None:  # as the training job does: the champion scored on this run's new rows
        metrics.update(gate_pipeline_recall_at_10=quality,
                       gate_champion_pipeline_recall_at_10=champion["metrics"]["pipeline_recall_at_10"],
                       gate_auc=quality, gate_champion_auc=champion["metrics"]["auc"], gate_users=10, gate_rows=40)
        tags["gate.champion_run"] = champion["run_id"]
    return log_training(s, metrics, feature_version=feature_version, data_version="d" + feature_version,
                        artifacts_dir=out, tags=tags)


def fresh_publish_settings(s: Settings) -> tuple[Settings, str]:
    """Every model of ``s``'s Triton unloaded and its repository emptied; returns settings with registered
    model names and an online key prefix of their own (publish pins the feature versions it serves), and
    their tag."""
    import shutil

    from recsys.serving.control import repository_index, unload_model

    for entry in repository_index(s):
        if entry.get("state") == "READY":
            unload_model(s, entry["name"])
    for child in s.triton_repo.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    tag = uuid.uuid4().hex[:6]
    s = replace(s, retrieval_model_name=f"retrieval-{tag}", ranking_model_name=f"ranking-{tag}", online_key_prefix=f"publish-{tag}")
    return s, tag
