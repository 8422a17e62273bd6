"""Triton killed (SIGKILL) while a publish loads its new version, then restarted: the publish fails at once
with a clear error, the repository on disk holds the version that served before (so that is what the
restarted Triton serves, never half of the new one), and the retried publish completes exactly once
under a new number.

A Triton of its own (its own home, repository and ports): this test kills it. The models are the toy
models of tests/serving (``y = x + version``); the second one's new version sleeps in ``initialize``
after touching a marker file, so the kill lands while Triton is loading it.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest

from recsys import stack
from recsys.settings import replace
from recsys.stack.triton import TritonService
from shared_helpers import kill_when_touched, running_triton, triton_ports

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serving_helpers import ToyWriter, ask, log_champion_run, smoke  # noqa: E402


@pytest.fixture
def own_triton(stack_settings, tmp_path):
    tag = uuid.uuid4().hex[:6]
    s = replace(stack_settings, home=tmp_path / "home", **triton_ports(), retrieval_model_name=f"retrieval-{tag}",
                ranking_model_name=f"ranking-{tag}", online_key_prefix=f"crash-{tag}")
    with running_triton(s):
        yield s, tag


def _processes_reading(repository: Path) -> list[int]:
    """PIDs whose command line names the repository: tritonserver and its python-backend stubs."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(repository).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue  # ended meanwhile
    return found


def test_triton_killed_during_a_publish_serves_the_old_version_after_restart(own_triton, tmp_path):
    from mlflow import MlflowClient

    from recsys.serving.history import read_history
    from recsys.serving.publish import PublishError, publish
    from recsys.layout import TritonRepository
    from recsys.serving.repository import model_versions

    s, tag = own_triton
    good = ToyWriter(f"k{tag}")
    log_champion_run(s, "fv1", 0.5, tmp=tmp_path)
    assert publish(writer=good, smoke_test=smoke(good.models), settings=s).version == 1

    log_champion_run(s, "fv1", 0.6, tmp=tmp_path)  # new champions: version 2 to publish
    loading = tmp_path / "loading"
    slow = ToyWriter(f"k{tag}", stages_init=f"Path({str(loading)!r}).touch(); import time; time.sleep(120)")
    pid = TritonService(s).processes[0].pid()
    killer = kill_when_touched(loading, pid)
    started = time.monotonic()
    with pytest.raises(PublishError) as failed:
        publish(writer=slow, smoke_test=smoke(slow.models), settings=s, airflow_run="recsys_publish/crash")
    took = time.monotonic() - started
    killer.join(timeout=5)
    assert loading.exists()  # the kill landed while the new version was loading
    assert took < 60, took  # the dead server is an error at once, not a wait for a load timeout
    message = str(failed.value)
    assert f"stopped answering while loading model '{good.models[1]}'" in message, message
    assert "publishing Triton version 2 failed" in message and "is not answering" in message, message
    assert f"holds the previous version again ({good.models[0]} v1, {good.models[1]} v1)" in message, message

    # On disk: version 1 only, activated, nothing staged; the failed attempt is recorded once.
    repo = TritonRepository(s.triton_repo)
    for model in good.models:  # the config Triton reads at start is version 1's own
        assert model_versions(s.triton_repo, model) == [1]
        assert repo.config(model).read_bytes() == repo.version_config(model, 1).read_bytes()
    assert not [p for p in s.triton_repo.parent.rglob("*") if ".staging" in p.name and any(p.iterdir())]
    assert [(h["version"], h["status"]) for h in read_history(s.triton_repo)] == [(1, "serving"), (2, "failed")]
    orphans = _processes_reading(s.triton_repo)
    assert orphans  # the stub stuck in the new version's initialize outlived its server

    stack.up(s, only=["triton"])  # the stack's restart: `recsys stack up`
    restarted = TritonService(s).processes[0].pid()
    assert restarted != pid
    assert not set(orphans) & set(_processes_reading(s.triton_repo))  # the restart ended the killed server's stubs
    for model in good.models:
        assert ask(s, model) == 101  # the restarted server loads what the repository serves: version 1

    retried = publish(writer=good, smoke_test=smoke(good.models), settings=s, airflow_run="recsys_publish/retry")
    assert retried.published and retried.version == 3  # never 2 again: that number is the failed attempt's
    for model in good.models:
        assert ask(s, model) == 103
    again = publish(writer=good, smoke_test=smoke(good.models), settings=s)
    assert not again.published and again.version == 3
    history = read_history(s.triton_repo)
    assert [(h["version"], h["status"]) for h in history] == [(1, "serving"), (2, "failed"), (3, "serving")]
    assert f"stopped answering while loading model '{good.models[1]}'" in history[1]["error"], history[1]
    tags = MlflowClient(s.mlflow_uri).get_model_version(s.retrieval_model_name, "2").tags
    assert tags["triton.version"] == "3" and tags["airflow.run"] == "recsys_publish/retry"
