"""Paced refreshes on the kinds of Redis client a deployment uses, all made by the settings' client factory
(``recsys.online.redis_store.client``): TLS with a private CA and a password, and a Redis Cluster with a
password. The prober's child process reads through the store's client: it must open connections of its
own with the same settings (an unpaced fallback would pass a refresh test, so the report must show probes).
"""

from __future__ import annotations

import multiprocessing
import socket
import ssl
import subprocess
import threading
import time

import pytest
import redis
from online_helpers import snapshot, tables

from recsys.online.redis_store import RedisOnlineStore
from recsys.settings import replace
from recsys.stack.service import free_port
from shared_helpers import write_test_ca


class TlsProxy:
    """TLS in front of the session's Redis (the embedded redis-server is built without TLS): accepts TLS
    connections on ``port`` and relays each to Redis' plain port; counts the connections it accepted."""

    def __init__(self, certificate, key, target: tuple[str, int]) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate, key)
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            try:
                client = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()
                continue
            self.accepted += 1
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._relay, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _relay(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def _assert_paced_and_reaped(result) -> None:
    report = result.pacing
    assert report["enabled"], report  # the child's probes answered: not the unpaced fallback
    assert report["first_idle_probe_p90_ms"] > 0 and report["probes_during_writes"] > 0
    assert not [p for p in multiprocessing.active_children() if p.name == "refresh-prober"]


def test_a_paced_refresh_over_tls_with_a_password(stack_settings, tmp_path):
    from recsys import credentials

    ca, certificate, key = write_test_ca(tmp_path)
    proxy = TlsProxy(certificate, key, ("127.0.0.1", stack_settings.redis_port))
    password = credentials.client_value(stack_settings, credentials.REDIS_PASSWORD)
    s = replace(stack_settings, redis_url=f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={ca}",
                redis_password=password, online_key_prefix=f"tls-{free_port()}", online_batch_size=100)
    store = RedisOnlineStore.from_settings(s)
    try:
        assert store.client.ping()  # through TLS, verified against the private CA, authenticated
        result = store.refresh(snapshot(tables(n_users=600, n_items=100)), read_budget=2.0)
        assert store.read(1000, [5000]).user_found
        _assert_paced_and_reaped(result)
        assert proxy.accepted >= 2  # the refresh's connection and the prober's own
        wrong = replace(s, redis_password="not-the-password")
        with pytest.raises(redis.AuthenticationError):
            RedisOnlineStore.from_settings(wrong).client.ping()
    finally:
        for key_ in store.client.scan_iter(match=f"{{{s.online_key_prefix}}}:*", count=1000):
            store.client.unlink(key_)
        store.close()
        proxy.close()


@pytest.fixture
def cluster_redis(tmp_path):
    """A one-node Redis Cluster (every slot on one node) with a password, from the embedded redis-server."""
    from recsys.stack.redis import redis_server_binary

    port, password = free_port(), "cluster-secret"
    process = subprocess.Popen(
        [str(redis_server_binary()), "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
         "--cluster-config-file", str(tmp_path / "nodes.conf"), "--requirepass", password, "--masterauth", password,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    plain = redis.Redis(port=port, password=password)
    try:
        for _ in range(100):
            try:
                plain.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        plain.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        for _ in range(100):
            if b"cluster_state:ok" in plain.execute_command("CLUSTER", "INFO"):
                break
            time.sleep(0.05)
        yield port, password
    finally:
        plain.close()
        process.terminate()
        process.wait(timeout=10)


def test_a_paced_refresh_on_a_redis_cluster_with_a_password(stack_settings, cluster_redis):
    port, password = cluster_redis
    s = replace(stack_settings, redis_url=f"redis://127.0.0.1:{port}", redis_password=password, online_batch_size=100)
    store = RedisOnlineStore.from_settings(s, cluster=True)
    try:
        from redis.cluster import RedisCluster

        assert isinstance(store.client, RedisCluster)
        t = tables(n_users=600, n_items=100)
        first = store.refresh(snapshot(t), read_budget=2.0)
        _assert_paced_and_reaped(first)
        t["users"].loc[:49, "segment"] += 1
        second = store.refresh(snapshot(t, feature_version="fv2"), incremental=True, read_budget=2.0)
        assert second.mode == "incremental" and (second.users_written, second.users_copied) == (50, 550)
        _assert_paced_and_reaped(second)
        assert store.current().version == second.version and store.read(1000, [5000]).user_found
    finally:
        store.close()
