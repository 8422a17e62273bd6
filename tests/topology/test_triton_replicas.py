"""Two Triton replicas serving one repository (the distributed topology): publishing switches both or neither,
clients spread their requests over both and skip one that is down.

Real servers: the session topology's two ``tritonserver`` replicas (``topology.up("triton")``). The model is the toy
``recsys`` python model of tests/shared_helpers.py under a name of this module's (the topology's ``recsys`` is left
to the loop's tests), published by the real :func:`recsys.serving.publish.publish` with the real default smoke test.
Faults are real and hit one replica only: the new version's ``model.py`` reads the command line of the server that
loads it (its parent process) and raises, or sleeps, only on replica 2's port; a replica is killed with SIGKILL.

The publish is given a popularity plan without a feature version (no Redis pin) whose re-check against MLflow's
champion aliases is skipped (:class:`GivenPlan`): MLflow is not part of what is tested here.
"""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from recsys.serving.plan import PublishPlan
from shared_helpers import kill_when_touched, toy_config, toy_expected, toy_source

MODEL = f"replicas_{uuid.uuid4().hex[:6]}"

FAIL_ON_PORT = """
import os as _os
if b"--http-port={port}" in open(f"/proc/{{_os.getppid()}}/cmdline", "rb").read().split(b"\\0"):
    raise RuntimeError("replica fault injected by the test: this version does not load here")
"""
SLOW_ON_PORT = """
import os as _os, time as _time
from pathlib import Path as _Path
if b"--http-port={port}" in open(f"/proc/{{_os.getppid()}}/cmdline", "rb").read().split(b"\\0"):
    _Path({marker!r}).touch()
    _time.sleep(120)
"""


class GivenPlan(PublishPlan):
    """A plan published as given: no MLflow champion check (see the module docstring)."""

    def check_still_current(self, s) -> None:
        return None


class ToyWriter:
    """A repository writer: the toy ``recsys`` model as :data:`MODEL`, ``fault`` appended to its ``model.py``."""

    def __init__(self, fault: str = ""):
        self.fault = fault

    def __call__(self, exports, staging, version, settings, lineage) -> list[str]:
        folder = staging / MODEL / str(version)
        folder.mkdir(parents=True)
        (folder / "model.py").write_text(toy_source() + self.fault)
        (staging / MODEL / "config.pbtxt").write_text(toy_config().replace('name: "recsys"', f'name: "{MODEL}"'))
        return [MODEL]


def publish_toy(s, fault: str = ""):
    from recsys.serving.publish import publish

    return publish(plan=GivenPlan(None, "", ""), writer=ToyWriter(fault), settings=s, force=True,
                   airflow_run="test/replicas")


def ready_versions(s, at) -> set[int]:
    """The versions of :data:`MODEL` READY on one replica, from its own repository index."""
    from recsys.serving.control import repository_index

    return {int(e["version"]) for e in repository_index(s, at=at) if e["name"] == MODEL and e.get("state") == "READY"}


def answer(s, at, user: int = 7, k: int = 3) -> list[int]:
    """Item ids one replica answers for ``user``."""
    import tritonclient.http as httpclient

    from recsys.serving.client import recommend_inputs, recommendation_arrays, served_contract
    from recsys.serving.triton_client import http_client

    client = http_client(s, at=at)
    try:
        contract = served_contract(client, MODEL)
        items, _ = recommendation_arrays(client.infer(MODEL, recommend_inputs(httpclient, user, k, contract=contract)), contract)
    finally:
        client.close()
    return items.tolist()


def served_requests(at) -> int:
    """Successful inferences of :data:`MODEL` (every version) on one replica: Triton's statistics extension."""
    stats = httpx.get(f"{at.url}/v2/models/{MODEL}/stats", timeout=10).json()
    return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])


def shares_of(ends, before: list[int], expected: int) -> list[int]:
    """Each replica's successful inferences since ``before``, once they add up to ``expected`` (Triton counts a
    request just after answering it, so the last one may show a moment later) or after 10 s."""
    import time

    deadline = time.monotonic() + 10
    while True:
        shares = [served_requests(at) - b for at, b in zip(ends, before)]
        if sum(shares) >= expected or time.monotonic() > deadline:
            return shares
        time.sleep(0.1)


def replica_pid(s, replica: int) -> int:
    from recsys.stack.triton import TritonService

    pid = TritonService(s).processes[replica].pid()
    assert pid is not None
    return pid


def kill_replica(s, replica: int) -> None:
    """SIGKILL one replica's server and wait until it is gone (so ``stack up`` sees it down)."""
    import psutil

    process = psutil.Process(replica_pid(s, replica))
    process.kill()
    process.wait(timeout=30)  # our child (the fixture started it): this reaps it


@pytest.fixture(scope="module")
def replicas(topology):
    """Both replicas up, serving a first version of :data:`MODEL`."""
    from recsys.serving.triton_client import endpoints

    s = topology.up("triton")
    assert s.triton_replica_count == 2
    first = publish_toy(s)
    return s, endpoints(s), first.version


def test_stack_status_shows_each_replica(replicas, capsys):
    from recsys import stack
    from recsys.stack.cli import _print_table

    s, ends, _ = replicas
    report = stack.services(s, only=["triton"])[0].status()
    assert report["answering"]
    rows = report["components"]
    assert sorted(rows) == ["triton-1", "triton-2"]
    for n, at in enumerate(ends):
        row = rows[f"triton-{n + 1}"]
        assert row["answering"] and row["pid"] and row["url"] == at.url
        assert row["log"] == str(s.services_root / "triton" / f"triton-{n + 1}.log")
    assert ends[1].http_port == ends[0].http_port + 3 and ends[1].grpc_port == ends[0].grpc_port + 3
    _print_table({"triton": report}, s.topology)  # `recsys stack status`
    lines = capsys.readouterr().out.splitlines()
    for n, at in enumerate(ends):
        assert any(line.split()[:3] == [f"triton-{n + 1}", "embedded", "yes"] and at.url in line for line in lines), lines


def test_a_publish_switches_every_replica(replicas):
    s, ends, _ = replicas
    result = publish_toy(s)
    assert result.published
    for at in ends:
        assert ready_versions(s, at) == {result.version}, at
        assert answer(s, at) == toy_expected(7, 3)


def test_a_rollback_switches_every_replica(replicas):
    from recsys.serving.publish import rollback

    s, ends, _ = replicas
    newer = publish_toy(s).version
    older = rollback(settings=s, reason="test").version
    assert older < newer
    for at in ends:
        assert ready_versions(s, at) == {older}, at
        assert answer(s, at) == toy_expected(7, 3)


def test_a_replica_that_cannot_load_rolls_the_publish_back_on_both(replicas):
    from recsys.layout import TritonRepository
    from recsys.serving.history import read_history, served
    from recsys.serving.plan import PublishError

    s, ends, _ = replicas
    before = int(served(s.triton_repo)["version"])
    with pytest.raises(PublishError) as failed:
        publish_toy(s, FAIL_ON_PORT.format(port=ends[1].http_port))
    message = str(failed.value)
    assert f"Triton at {ends[1].url} (replica 2 of 2) could not load model {MODEL!r}" in message, message
    assert "replica fault injected by the test" in message and "the previous version serves" in message, message
    for at in ends:  # both serve the previous version again, not the new one
        assert ready_versions(s, at) == {before}, at
        assert answer(s, at) == toy_expected(7, 3)
    repo = TritonRepository(s.triton_repo)
    assert repo.versions(MODEL)[-1] == before
    assert repo.config(MODEL).read_bytes() == repo.version_config(MODEL, before).read_bytes()
    last = read_history(s.triton_repo)[-1]
    assert last["status"] == "failed" and "replica 2 of 2" in last["error"]

    retried = publish_toy(s)
    assert retried.published and retried.version == last["version"] + 1  # the failed attempt's number is never reused
    for at in ends:
        assert ready_versions(s, at) == {retried.version}, at


def batch_recommend(s, users: list[int]) -> list[list[int]]:
    """The batch job's requests (all in flight at once, over every replica) for ``users``."""
    from recsys.serving import history
    from recsys.serving.batch import _recommend_many
    from recsys.serving.client import served_contract
    from recsys.serving.triton_client import Replicas

    version = int(history.served(s.triton_repo)["version"])
    replicas = Replicas(s, "http", concurrency=2)
    try:
        contract = replicas.call(lambda client: served_contract(client, MODEL))
        return [items.tolist() for items, _ in _recommend_many(replicas, users, 3, version, contract, model=MODEL)]
    finally:
        replicas.close()


def test_requests_are_spread_over_both_replicas(replicas):
    from recsys.serving.client import RecommendClient

    s, ends, _ = replicas
    before = [served_requests(at) for at in ends]
    with RecommendClient(s, "grpc", model=MODEL) as client:  # `recsys recommend`, the HTTP API
        for user in range(20):
            assert [item for item, _ in client.recommend(user, k=3)] == toy_expected(user, 3)
    shares = shares_of(ends, before, 20)
    assert sum(shares) == 20 and all(share >= 5 for share in shares), shares

    before = [served_requests(at) for at in ends]
    assert batch_recommend(s, list(range(10))) == [toy_expected(user, 3) for user in range(10)]
    shares = shares_of(ends, before, 10)
    assert sum(shares) == 10 and all(share >= 3 for share in shares), shares


def test_a_killed_replica_is_skipped_then_publishing_fails_and_recovers_on_both(replicas, topology, tmp_path):
    """One test for the kills: each costs a replica restart (the restart is ``recsys stack up``).

    1. replica 1 killed: requests go to replica 2, a publish fails; 2. replica 2 killed while loading a new
    version."""
    import psutil

    from recsys.serving import history
    from recsys.serving.client import RecommendClient
    from recsys.serving.plan import PublishError

    s, ends, _ = replicas
    # 1. Replica 1 killed: every request still answers, from replica 2.
    kill_replica(s, 0)
    before = served_requests(ends[1])
    with RecommendClient(s, "grpc", model=MODEL) as client:
        for user in range(10):
            assert [item for item, _ in client.recommend(user, k=3)] == toy_expected(user, 3)
    assert shares_of(ends[1:], [before], 10) == [10]
    assert batch_recommend(s, list(range(6))) == [toy_expected(user, 3) for user in range(6)]
    assert shares_of(ends[1:], [before], 16) == [16]
    # ... and no publish while it is down: replica 2 goes on serving the version both serve after the restart.
    current = int(history.served(s.triton_repo)["version"])
    with pytest.raises(PublishError, match=rf"Triton at {ends[0].url} \(replica 1 of 2\) is not answering"):
        publish_toy(s)
    assert ready_versions(s, ends[1]) == {current}
    topology.up("triton")  # replica 1 back; it loads what the repository serves
    assert ready_versions(s, ends[0]) == {current}

    # 2. Replica 2 killed while it loads a new version: the publish fails naming it, replica 1 serves the
    #    previous version again, the repository holds it, and so a restarted replica 2 serves it too.
    marker = tmp_path / "loading"
    pid = replica_pid(s, 1)
    killer = kill_when_touched(marker, pid)
    with pytest.raises(PublishError) as failed:
        publish_toy(s, SLOW_ON_PORT.format(port=ends[1].http_port, marker=str(marker)))
    killer.join(timeout=10)
    assert marker.exists()
    psutil.Process(pid).wait(timeout=30)
    message = str(failed.value)
    assert f"Triton at {ends[1].url} (replica 2 of 2) stopped answering while loading model {MODEL!r}" in message, message
    assert f"Triton at {ends[1].url} (replica 2 of 2) is not answering" in message, message
    assert f"holds the previous version again ({MODEL} v{current})" in message, message
    assert f"the others serve it again (Triton at {ends[0].url} (replica 1 of 2))" in message, message
    assert ready_versions(s, ends[0]) == {current}
    topology.up("triton")
    for at in ends:
        assert ready_versions(s, at) == {current}, at
        assert answer(s, at) == toy_expected(7, 3)

    failed_version = history.read_history(s.triton_repo)[-1]["version"]
    retried = publish_toy(s)
    assert retried.published and retried.version == failed_version + 1
    for at in ends:
        assert ready_versions(s, at) == {retried.version}, at


def test_a_switch_killed_after_one_replica_loaded_is_undone_on_both_at_restart(replicas, topology, tmp_path):
    """The publishing process and replica 2 die together after replica 1 loaded the new version (a machine
    lost mid-publish): ``recsys stack up`` puts the repository back to the history's version and reloads it on
    replica 1, which still runs, so both serve what was smoke-tested, never one of each."""
    from recsys.layout import TritonRepository
    from recsys.serving import history
    from recsys.serving.control import load_model
    from recsys.serving.repository import activate_newest, seal_version

    s, ends, _ = replicas
    repo = TritonRepository(s.triton_repo)
    current = int(history.served(repo)["version"])
    # What the killed publish did: its version moved in, activated, loaded on replica 1 only, never recorded.
    new = history.next_version(repo)
    staged = TritonRepository(tmp_path / "staged")
    ToyWriter()(None, staged.path, new, s, {})
    seal_version(staged, MODEL, new, {"version": new, "model": MODEL})
    os.rename(staged.version_dir(MODEL, new), repo.version_dir(MODEL, new))
    activate_newest(repo, MODEL)
    load_model(s, MODEL, at=ends[0])
    assert ready_versions(s, ends[0]) == {new}
    kill_replica(s, 1)

    topology.up("triton")
    assert repo.versions(MODEL)[-1] == current
    assert history.read_history(repo)[-1]["status"] == "interrupted"
    for at in ends:
        assert ready_versions(s, at) == {current}, at
        assert answer(s, at) == toy_expected(7, 3)
