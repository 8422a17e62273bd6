"""The online store's own tests, run again on the distributed topology's Redis Cluster (3 primaries + 3 replicas).

The scenarios are tests/online's, imported as they are: versions, incremental refreshes, failed and concurrent
refreshes, garbage collection, a reader during refreshes, bulk reads, the live layer, text ids. Only the fixtures
differ: ``make_store`` builds the store on a ``RedisCluster`` client made by the settings' own factory (what the
topology's services use), and ``redis_client``, with which the tests inspect keys, is a plain client of the
primary that owns the test's hash tag (every key of a store lives there; MONITOR needs a plain connection).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "online"))

from online_helpers import store_factory  # noqa: E402
from test_bulk import *  # noqa: E402,F401,F403
from test_live import *  # noqa: E402,F401,F403
from test_online_string_ids import *  # noqa: E402,F401,F403
from test_redis_store import *  # noqa: E402,F401,F403


@pytest.fixture(scope="module")
def redis_service(topology):
    from recsys.stack.redis import RedisService

    topology.up("redis")
    return RedisService(topology.settings)


@pytest.fixture(scope="module")
def cluster_client(redis_service):
    from recsys.online.redis_store import client

    connection = client(redis_service.settings)
    yield connection
    connection.close()


@pytest.fixture
def store_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_client(redis_service, store_prefix):
    """A plain client of the primary owning ``{store_prefix}``'s slot."""
    _, port = redis_service.primary_of("{" + store_prefix + "}")
    connection = redis_service.node_client(port)
    yield connection
    connection.close()


@pytest.fixture
def make_store(cluster_client, redis_client, store_prefix):
    with store_factory(cluster_client, redis_client, store_prefix) as make:
        yield make


def test_the_store_runs_on_a_cluster_of_three_primaries_with_a_replica_each(cluster_client, redis_service):
    from redis.cluster import RedisCluster

    assert isinstance(cluster_client, RedisCluster)
    status = redis_service.status()
    assert status["answering"]
    assert sorted(c["role"] for c in status["components"].values()) == ["master"] * 3 + ["slave"] * 3
    assert all(c["cluster_state"] == "ok" for c in status["components"].values())
    assert status["online_store_primary"] in status["components"]


def test_a_restarted_cluster_is_the_same_cluster_with_its_data(redis_service, make_store, topology):
    """``stack down`` / ``stack up`` restarts the six nodes from their nodes.conf and AOF: the same node ids,
    the store's data, and no second ``redis-cli --cluster create``. The password is in the 0600 config files
    and the tool's environment, never on a command line or in a log."""
    from online_helpers import snapshot, tables

    from recsys import credentials, stack

    store = make_store()
    version = store.refresh(snapshot(tables())).version
    def node_ids() -> dict:
        ids = {}
        for name, port in redis_service.nodes():
            connection = redis_service.node_client(port)
            ids[name] = connection.execute_command("CLUSTER", "MYID")
            connection.close()
        return ids

    ids_before = node_ids()
    stack.down(topology.settings, only=["redis"])
    topology.up("redis")

    assert node_ids() == ids_before
    assert store.current().version == version and store.read(1000, [5000]).user_found
    create_log = (redis_service.directory / "cluster-create.log").read_text()
    assert create_log.count("Performing hash slots allocation") == 1
    password = credentials.ensure(topology.settings, credentials.REDIS_PASSWORD)
    for process in redis_service.processes:
        config = redis_service.node_config(process.name)
        assert config.stat().st_mode & 0o777 == 0o600
        assert f"masterauth {password}" in config.read_text() and "cluster-enabled yes" in config.read_text()
        assert password not in process.shown_command() and password not in process.log_file.read_text()
    assert password not in create_log
