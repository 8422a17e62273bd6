"""One typed settings object for the whole project.

Every value comes from an environment variable (prefix ``RECSYS_``, plus the standard
``MLFLOW_TRACKING_URI``) or falls back to an embedded default on loopback. The module imports only
the standard library (and ``recsys.errors``, which imports nothing), because both runtimes (the
Airflow control plane and the Merlin runtime with its old ``typing-extensions``) import it. An
invalid value raises :class:`SettingError` naming its variable, every invalid one at once.

Use :func:`get_settings` everywhere; never read ``os.environ`` for these values elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, get_type_hints

from recsys.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REDIS_CLUSTER_NODES = 6
"""Nodes of the distributed topology's embedded Redis Cluster: 3 primaries, each with one replica."""


def _default_home() -> Path:
    # A source checkout keeps its state beside the code (easy to find, easy to delete);
    # an installed package uses the user's home.
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / ".recsys"
    return Path.home() / ".recsys"


@dataclass(frozen=True)
class Settings:
    """Environment variable for each field: ``RECSYS_<FIELD NAME IN UPPER CASE>``."""

    # --- where things live -------------------------------------------------------------
    home: Path = field(default_factory=_default_home)
    """State directory: data and feature versions, service data, logs and PIDs."""
    landing_dir: Optional[Path] = None
    """Folder where raw input files arrive (the ETL DAG reads it). Default: ``<home>/landing``."""
    merlin_python: Path = PROJECT_ROOT / ".envs" / "merlin" / "bin" / "python"
    """Interpreter of the Merlin runtime (TensorFlow 2.12, NVTabular); Airflow runs heavy tasks with it."""

    # --- topology ---------------------------------------------------------------------------
    topology: str = "embedded"
    """How ``recsys stack up`` runs the services. ``embedded``: one process each, on SQLite (Airflow's
    LocalExecutor, MLflow, one Redis, one Triton). ``distributed``: the topology of docker/compose.yaml as local
    processes on the same engines: Postgres (Airflow's and MLflow's database), Airflow's CeleryExecutor (a Redis
    broker; a worker for the ``default`` queue, one for the ``gpu`` queue that runs the Merlin-runtime tasks), a
    Redis Cluster of 3 primaries + 3 replicas (the online store), a Dask cluster (scheduler + 2 workers: the
    NVTabular ETL) and two Triton replicas. Any service can still be external through its URL setting."""

    # --- services: every one can be external; the embedded default binds to loopback ---
    host: str = "127.0.0.1"
    """Address the embedded services bind to and their default URLs use (loopback: not reachable from other hosts)."""
    redis_url: Optional[str] = None
    """e.g. ``rediss://redis.example:6380/0``. Unset: the embedded redis-server."""
    redis_cluster: bool = False
    """``RECSYS_REDIS_URL`` names a node of a Redis Cluster: every client is redis-py's ``RedisCluster`` (the
    online store's keys share one hash tag, so its scripts and pipelines stay on one slot). docker/compose.yaml."""
    redis_port: int = 6390
    """Port of the embedded redis-server; with the distributed topology the first of the six cluster nodes'
    consecutive ports (redis-1 .. redis-6 on this port .. this port + 5)."""
    redis_cluster_node_timeout_ms: int = 3000
    """The embedded Redis Cluster's ``cluster-node-timeout`` (distributed topology): a primary that answers no
    peer for this long is failed over to its replica, so reads of its slots fail for about this long plus
    the election (~1 s; bench/results/redis_cluster.json). Redis' default (15 s) would stop the store for
    15 s; much shorter risks failovers of a primary that is only slow on a busy machine."""
    redis_password: Optional[str] = None
    """Password every Redis client sends (``AUTH``). Unset: the embedded Redis's, generated at its first
    start into ``<home>/services/redis/password`` (mode 0600); an external Redis without one needs none."""
    mlflow_tracking_uri: Optional[str] = None
    """Read from ``MLFLOW_TRACKING_URI`` (MLflow's own variable). Unset: the embedded server."""
    mlflow_port: int = 5050
    """Port of the embedded MLflow tracking server."""
    mlflow_tracking_username: str = "admin"
    """User every MLflow client authenticates as (``MLFLOW_TRACKING_USERNAME``, MLflow's own variable)."""
    mlflow_tracking_password: Optional[str] = None
    """Its password (``MLFLOW_TRACKING_PASSWORD``). Unset: the embedded server's admin password, generated at
    its first start into ``<home>/services/mlflow/password`` (mode 0600); an external server without auth needs none."""
    mlflow_request_retries: int = 5
    """How often the project's MLflow clients retry a failed request (refused connection, 5xx), waiting
    0, 4, 8, 16, 32 s between tries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``): a server restart is ridden out;
    a request to a server that stays down fails after about a minute, failing the task with MLflow's message,
    and Airflow retries the task. MLflow's own default (7) waits about 4 minutes per request."""
    mlflow_request_timeout_seconds: int = 60
    """How long an MLflow client waits for one answer (``MLFLOW_HTTP_REQUEST_TIMEOUT``; MLflow's default 120):
    a server that accepts connections but hangs fails the request after this, each retry included."""
    airflow_url: Optional[str] = None
    """Base URL of an external Airflow API server. Unset: the embedded one."""
    airflow_port: int = 8280
    """Port of the embedded Airflow API server (the UI, the REST API and the tasks' execution API)."""
    airflow_user: str = "admin"
    """User the project logs in to Airflow as; the embedded Airflow creates it with the admin role."""
    airflow_password: Optional[str] = None
    """Unset: the embedded Airflow generates one (see ``recsys stack status``)."""
    dask_scheduler_address: Optional[str] = None
    """e.g. ``tcp://10.0.0.5:8786``. Set: NVTabular runs on that Dask cluster. Unset: local threads, or with the
    distributed topology the embedded Dask cluster."""
    dask_scheduler_port: int = 8330
    """Port of the embedded Dask scheduler (distributed topology)."""
    dask_workers: int = 2
    """Worker processes of the embedded Dask cluster (distributed topology)."""
    dask_worker_threads: int = 1
    """Threads of each embedded Dask worker (NVTabular's partitions run in parallel across them)."""
    dask_worker_memory: str = "4GiB"
    """Memory limit of each embedded Dask worker (Dask's syntax: ``4GiB``, ``500MB``): past 60 % it spills to
    ``<home>/services/dask/<worker>/``, at 95 % its nanny restarts it. Workers x this must fit the machine."""
    postgres_url: Optional[str] = None
    """Server of an external Postgres, e.g. ``postgresql://recsys:secret@db.example:5432`` (distributed topology:
    it holds the databases ``airflow`` and ``mlflow``). Unset: the embedded Postgres server."""
    postgres_port: int = 8320
    """Port of the embedded Postgres server (distributed topology)."""
    celery_broker_url: Optional[str] = None
    """Redis URL of Celery's broker (distributed topology), e.g. ``redis://:secret@broker.example:6379/0``; a
    Redis of its own (Celery cannot use a Redis Cluster). Unset: the embedded broker."""
    celery_broker_port: int = 8321
    """Port of the embedded broker's redis-server (distributed topology)."""

    # --- data ---------------------------------------------------------------------------
    validation_split: str = "auto"
    """``time`` (the last ``validation_days`` days), ``user`` (each user's newest ``validation_fraction``), or
    ``auto``: time when that window holds enough interactions of known users (recsys.features.split)."""
    validation_days: int = 7
    """Time split: the last N days of interactions are the validation window."""
    validation_fraction: float = 0.2
    """Per-user split: a seeded random share of each user's interactions is validation."""

    # --- training -----------------------------------------------------------------------
    epochs: int = 30
    """At most this many epochs per model; early stopping on the validation metric usually ends sooner."""
    patience: int = 5
    """Early stopping: epochs without a better validation metric before training stops (0: never)."""
    batch_size: int = 0
    """0: chosen from the number of training rows (about 200 steps per epoch, between 256 and 8192)."""
    embedding_dim: int = 64
    """Width of every embedding table of both models (the two-tower's query and item vectors, the DLRM's features)."""
    learning_rate: float = 0.001
    """Adam's; with L2 1e-4 and dropout 0.2 the best of the settings tried on MovieLens (bench/README.md)."""
    lr_patience: int = 2
    """Two-tower: halve the learning rate after this many epochs without a better validation metric (down
    to 1/16 of it; 0: constant). The refit replays the same rates epoch by epoch."""
    l2_reg: float = 1e-4
    """L2 penalty on every embedding table of both models."""
    dropout: float = 0.2
    """Dropout in the MLP blocks of both models."""
    history_length: int = 100
    """The query tower reads each user's newest N items besides their id and features (0: no history)."""
    negatives_per_positive: int = 4
    """Ranking trains on sampled negatives when the data holds only positives."""
    refit: bool = True
    """Publish models refitted on training + validation rows (for the best epoch count) instead of the
    early-stopped ones, so they learn from the newest interactions. Metrics stay those of the early-stopped fit."""
    tune_trials: int = 0
    """Hyperparameter search (Optuna) before training: this many trials (0: none); ``recsys train --tune N``."""
    tune_timeout_seconds: float = 3600.0
    """The search stops after this long, whatever the number of trials done."""
    seed: int = 42
    """Seeds training (TensorFlow, negative sampling, the tuning sampler) and the drift check's row sampling."""
    gpu_pool: str = "gpu"
    """Airflow pool of the GPU-bound training tasks (``recsys_train``), so production can route them to GPU workers."""
    gpu_queue: Optional[str] = None
    """Executor queue of every Merlin-runtime task (``@jobs.merlin_task``: the ETL, training features, training):
    the Celery workers that consume it have the Merlin runtime and the GPU (docker/compose.yaml's
    ``airflow-worker-gpu``). Unset: ``gpu`` in the distributed topology, else ``default``, Airflow's own default
    queue (the LocalExecutor ignores queues). Read it through ``merlin_queue``."""
    gpu_pool_slots: int = 1
    """Slots of that pool: training tasks that may run at once (the embedded Airflow creates the pool)."""
    retrieval_model_name: str = "recsys-retrieval"
    """MLflow registered model of the two-tower retrieval model (the ``champion`` alias marks the served version)."""
    ranking_model_name: str = "recsys-ranking"
    """MLflow registered model of the DLRM ranker, promoted together with the retrieval model."""
    retrieval_primary_metric: str = "pipeline_recall_at_10"
    """What the champion gate compares (and holds above the popularity baseline's): ``pipeline_recall_at_10``,
    retrieval's candidates ordered by the scoring stage, what users get; or ``recall_at_10``, the two-tower alone."""
    ranking_primary_metric: str = "auc"
    """What the champion gate compares for the ranker: a metric the training run logs, e.g. ``auc``."""
    experiment_name: str = "recsys"
    """MLflow experiment of the training runs."""

    # --- online feature store (Redis) -------------------------------------------------------
    online_key_prefix: str = "recsys"
    """Every key of the online store starts with ``{<prefix>}:`` (one hash tag: one Redis Cluster slot)."""
    online_batch_size: int = 1000
    """Refresh: entities written per pipeline (one round trip each); a paced refresh's largest unit."""
    online_refresh_read_budget: float = 2.0
    """Refresh pacing: readers' p99 latency while a refresh writes may be at most this many times its idle
    value (measured by probe reads before and during the refresh; recsys.online.pacing). The refresh
    shortens its write units and pauses between them to stay within it, and reports the rate it reached.
    0: no pacing (full speed)."""
    online_gc_grace_seconds: int = 3600
    """An online version that stopped being current is deleted this long afterwards."""
    online_refresh_schedule: str = "@hourly"
    """Cron expression of the ``recsys_feature_refresh`` DAG (it also runs on each new feature version)."""
    online_popularity_size: int = 1000
    """Items in the popularity list (cold start)."""

    # --- serving (Triton and the four-stage model) ----------------------------------------
    triton_url: Optional[str] = None
    """HTTP base URL of an external Triton, e.g. ``http://triton.example:8000``, or of several replicas serving the
    same repository, comma-separated (``http://triton-1:8000,http://triton-2:8000``): publishing loads every one,
    clients spread their requests over them. Unset: the embedded one(s)."""
    triton_replicas: int = 0
    """Embedded Triton servers serving the same repository (``triton_endpoints``): replica n (0-based) listens on
    ``triton_http_port``/``grpc``/``metrics`` + 3n. 0: one in the embedded topology, two in the distributed one."""
    triton_http_port: int = 8300
    """HTTP port of the embedded Triton (health, model control, HTTP inference); its first replica's."""
    triton_grpc_port: int = 8301
    """Also the gRPC port of an external Triton (on the host of each URL of ``triton_url``)."""
    triton_ca_file: Optional[Path] = None
    """PEM bundle that verifies an ``https://`` ``triton_url``'s certificate (TLS for HTTP and gRPC)."""
    triton_control_key: Optional[str] = None
    """Key of Triton's model-repository API (load, unload, index) and its logging and trace settings (header
    ``recsys-control-key``): only publishing holds it; inference stays open. Unset: the embedded Triton's, generated at its first start into
    ``<home>/services/triton/control_key`` (mode 0600); an external Triton without a restriction needs none."""
    triton_metrics_port: int = 8302
    """Prometheus metrics port of the embedded Triton."""
    triton_repository: Optional[Path] = None
    """Triton model repository. Default: ``<home>/triton/repository``."""
    triton_instances: int = 2
    """Instances of the four-stage model (one per core: each runs TensorFlow single-threaded)."""
    triton_batch_delay_us: Optional[int] = 0
    """Four-stage model, Triton's dynamic batching: >= 0 (default 0: no queue delay), the model gets every
    queued request at once, waiting up to that many microseconds for more, and clients send ``user_id``
    of shape [1, 1] (about 2x the throughput at concurrency 16, bench/results/serving.json). Negative
    (e.g. ``RECSYS_TRITON_BATCH_DELAY_US=-1``) or None: batching off, one request per call, shape [1]."""
    candidates_k: int = 200
    """Retrieval: candidates taken from the FAISS index before filtering and ranking."""
    recommend_default_k: int = 10
    """Items in an answer when the request does not ask for a number."""
    recommend_max_k: int = 100
    """Most items one request may ask for (a larger k is refused)."""
    faiss_index: str = "auto"
    """``flat`` (exact inner product), ``ivf`` (approximate), or ``auto``: IVF from 50,000 items."""
    max_per_category: int = 0
    """Ordering: at most N items of one category in a response (0: no limit)."""
    category_column: str = "category"
    """Ordering: the item feature that defines a category."""
    boosts: str = ""
    """Ordering: score multipliers by raw item id, e.g. ``5003=1.5,5010=0.5`` (promotions, demotions)."""
    exploration_temperature: float = 0.0
    """Ordering: 0 keeps the ranker's order (deterministic); > 0 samples the order (Gumbel top-k)."""
    exploration_seed: Optional[int] = None
    """Set: exploration is reproducible per (seed, user)."""

    # --- publishing and offline recommendations -------------------------------------------
    triton_keep_versions: int = 3
    """Model versions kept on disk per Triton model (the served one + older ones for rollback)."""
    batch_top_n: int = 20
    """Offline mode: items precomputed per user."""
    batch_concurrency: int = 8
    """Offline mode: requests in flight to Triton at once."""
    batch_schedule: str = "@daily"
    """Cron expression of the ``recsys_batch_recommendations`` DAG (it also runs when a new version serves)."""

    # --- live events: the HTTP API, the event log, the live layer of the online store -------
    api_url: Optional[str] = None
    """Base URL of an external recsys HTTP API, e.g. ``https://recs.example``. Unset: the embedded one."""
    api_port: int = 8310
    """Port of the embedded recsys HTTP API."""
    api_token: Optional[str] = None
    """Bearer token the HTTP API requires. Unset: generated at its first start, kept in
    ``<home>/services/api/token`` (mode 0600; ``recsys stack status`` names the file)."""
    api_workers: int = 1
    """uvicorn worker processes of the embedded API."""
    event_types: str = "impression,view,click,add_to_cart,purchase,rating"
    """Event types the API and the event stream accept (anything else is refused, naming this list)."""
    negative_event_types: str = "impression"
    """Event types that are not engagement: where the landing data has labels, live events of these
    types land with label 0, the others with 1."""
    events_max_age_hours: float = 24.0
    """Events whose timestamp is older than this are refused (late data goes through the landing folder)."""
    events_max_future_seconds: float = 300.0
    """Events whose timestamp is this far ahead of the server's clock are refused (clock skew allowance)."""
    events_max_batch: int = 10_000
    """Most events in one ``POST /v1/events`` (and one accept)."""
    live_recent_items: int = 20
    """The recent-items sequence of a user: the newest N distinct items of their live events, which lead the
    history the models read (all of them are filtered as seen)."""
    live_ttl_hours: float = 168.0
    """A user's live state (seen items since the batch, recent items) expires this long after their last
    event; it must outlast the batch path (ETL + refresh) that brings those events into an online version."""
    live_neighbours_k: int = 50
    """A user unknown to the batch data who sent events is answered by the models, their events as history;
    with a model without a history input, by this many cosine neighbours of their recent items instead."""
    events_consumer_name: str = ""
    """Name of this landing consumer in the consumer group (empty: the host name). Run more processes
    with distinct names to share the stream."""
    events_flush_seconds: float = 60.0
    """The landing consumer writes a parquet part at least this often while events arrive."""
    events_part_max_rows: int = 100_000
    """... and as soon as it holds this many events."""
    events_claim_idle_seconds: float = 60.0
    """Entries a consumer read but did not acknowledge for this long are claimed by another (a crashed
    consumer's work is not lost). Keep it far longer than writing one part takes (milliseconds): a
    consumer stalled longer than this between its checks and its rename could land a part twice."""
    events_metrics_port: int = 8311
    """Prometheus endpoint of the embedded event worker (the API serves ``/metrics`` on its own port)."""
    events_land_timeout_seconds: float = 30.0
    """Before ingesting the landing folder, the ETL and drift checks ask the landing consumers to write what
    they hold and wait this long for it, so the data version holds every event accepted before (0: don't ask)."""
    events_worker_url: Optional[str] = None
    """Metrics URL of an event worker run elsewhere (then the stack only checks it). Unset: the embedded one."""

    # --- drift monitoring (Evidently) ------------------------------------------------------
    drift_schedule: str = "@hourly"
    """Cron expression of the ``recsys_drift`` DAG (one drift check per run)."""
    drift_window_days: float = 7.0
    """Current window: the last N days of interactions of the newest data version."""
    drift_methods: str = ""
    """Per-feature drift method overriding Evidently's default by type and size, e.g.
    ``price_band=psi,item_age_days=wasserstein`` (any Evidently stattest name)."""
    drift_thresholds: str = ""
    """Per-feature drift threshold overriding the method's default, e.g. ``price_band=0.2``."""
    drift_share: float = 0.5
    """Drift is decided when at least this share of the features drifted."""
    drift_consecutive_checks: int = 2
    """Hysteresis: retrain only after drift in this many consecutive checks (against the same champion)."""
    drift_cooldown_hours: float = 24.0
    """At most one drift-triggered retrain per this many hours."""
    drift_max_rows: int = 500_000
    """Each window is sampled down to this many rows (seeded) before the check; 0: no limit."""
    monitoring_experiment_name: str = "recsys-monitoring"
    """MLflow experiment of the drift checks."""

    def __post_init__(self) -> None:
        # Checked here (not where a value is used) so a bad value fails every command at once, naming
        # its variable, and replace() cannot make an invalid object either.
        problems = _value_problems(self)
        if problems:
            raise SettingError(problems)

    # --- derived paths and URLs -----------------------------------------------------------
    @property
    def distributed(self) -> bool:
        """The ``distributed`` topology (see ``topology``)."""
        return self.topology == "distributed"

    @property
    def dask_scheduler(self) -> Optional[str]:
        """The Dask scheduler NVTabular (the ETL) runs on: ``dask_scheduler_address`` if set, else the embedded
        cluster's with the distributed topology, else None: local threads in the ETL's own process."""
        if self.dask_scheduler_address:
            return self.dask_scheduler_address
        return f"tcp://{self.host}:{self.dask_scheduler_port}" if self.distributed else None

    @property
    def merlin_queue(self) -> str:
        """The executor queue of the Merlin-runtime tasks (see ``gpu_queue``); control-plane tasks use ``default``."""
        return self.gpu_queue or ("gpu" if self.distributed else "default")

    @property
    def celery_broker(self) -> str:
        """Celery's broker: ``celery_broker_url``, else the embedded broker's URL (without its password, which
        ``recsys.stack.broker.broker_url`` adds from the credentials)."""
        return self.celery_broker_url or f"redis://{self.host}:{self.celery_broker_port}/0"

    @property
    def landing(self) -> Path:
        return self.landing_dir or self.home / "landing"

    @property
    def data_root(self) -> Path:
        return self.home / "data"

    @property
    def features_root(self) -> Path:
        return self.home / "features"

    @property
    def runs_root(self) -> Path:
        """Scratch space for training outputs before they are logged to MLflow."""
        return self.home / "runs"

    @property
    def monitoring_root(self) -> Path:
        """Drift checks (``checks/<check_id>/``) and their ``history.jsonl``."""
        return self.home / "monitoring"

    @property
    def services_root(self) -> Path:
        return self.home / "services"

    @property
    def redis(self) -> str:
        return self.redis_url or f"redis://{self.host}:{self.redis_port}/0"

    @property
    def redis_is_cluster(self) -> bool:
        """Whether the online store is a Redis Cluster (every client is redis-py's ``RedisCluster``): an external
        one (``redis_cluster``), or the embedded one of the distributed topology (3 primaries + 3 replicas)."""
        return self.redis_cluster or (self.distributed and self.redis_url is None)

    @property
    def redis_nodes(self) -> list[tuple[str, int]]:
        """The Redis nodes a client may start from: the embedded cluster's six (so a client made while
        ``redis_port``'s node is down still finds the cluster), else the one of ``redis``."""
        import urllib.parse

        if self.distributed and self.redis_url is None:
            return [(self.host, self.redis_port + n) for n in range(REDIS_CLUSTER_NODES)]
        url = urllib.parse.urlsplit(self.redis)
        return [(url.hostname or self.host, url.port or 6379)]

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def airflow(self) -> str:
        return (self.airflow_url or f"http://{self.host}:{self.airflow_port}").rstrip("/")

    @property
    def triton_repo(self) -> Path:
        return self.triton_repository or self.home / "triton" / "repository"

    @property
    def triton_replica_count(self) -> int:
        """How many Triton servers serve the repository (see ``triton_replicas``; external: the URLs given)."""
        if self.triton_url is not None:
            return len(_csv(self.triton_url))
        return self.triton_replicas or (2 if self.distributed else 1)

    def triton_ports(self, replica: int) -> tuple[int, int, int]:
        """(HTTP, gRPC, metrics) port of embedded replica ``replica`` (0-based): the settings' ports + 3n."""
        step = 3 * replica
        return self.triton_http_port + step, self.triton_grpc_port + step, self.triton_metrics_port + step

    @property
    def triton_endpoints(self) -> tuple[tuple[str, str], ...]:
        """``(HTTP base URL, gRPC host:port)`` of every Triton replica, in order: THE list of Triton servers.
        Publishing loads each one (recsys.serving.control), clients spread requests over them
        (recsys.serving.triton_client.Replicas)."""
        if self.triton_url is not None:
            urls = [url.rstrip("/") for url in _csv(self.triton_url)]
            return tuple((url, f"{_url_host(url) or self.host}:{self.triton_grpc_port}") for url in urls)
        ports = [self.triton_ports(n) for n in range(self.triton_replica_count)]
        return tuple((f"http://{self.host}:{http}", f"{self.host}:{grpc}") for http, grpc, _ in ports)

    @property
    def triton_http(self) -> str:
        """HTTP base URL of the first Triton replica (the only one by default); messages name it. Requests to
        Triton go through ``triton_endpoints``, all of them."""
        return self.triton_endpoints[0][0]

    @property
    def triton_grpc(self) -> str:
        """``host:port`` of the first Triton replica's gRPC endpoint (see ``triton_http``)."""
        return self.triton_endpoints[0][1]

    @property
    def event_type_list(self) -> tuple[str, ...]:
        """``event_types`` as a tuple (order kept, blanks dropped)."""
        return _csv(self.event_types)

    @property
    def negative_event_type_list(self) -> tuple[str, ...]:
        return _csv(self.negative_event_types)

    @property
    def api(self) -> str:
        """Base URL of the recsys HTTP API."""
        return (self.api_url or f"http://{self.host}:{self.api_port}").rstrip("/")

    @property
    def embedded(self) -> dict[str, bool]:
        """Which services the project starts itself (the rest are external)."""
        return {
            "postgres": self.postgres_url is None,
            "redis": self.redis_url is None,
            "broker": self.celery_broker_url is None,
            "dask": self.dask_scheduler_address is None,
            "mlflow": self.mlflow_tracking_uri is None,
            "airflow": self.airflow_url is None,
            "triton": self.triton_url is None,
            "api": self.api_url is None,
            "events": self.events_worker_url is None,
        }

    def as_env(self) -> dict[str, str]:
        """The settings as environment variables, for child processes (Airflow, Triton, tasks)."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            env[env_name(f.name)] = str(value)
        return env

    def child_env(self, base: Optional[dict[str, str]] = None) -> dict[str, str]:
        """The environment of a child process of these settings: ``base`` (default ``os.environ``) with
        every setting's variable replaced by :meth:`as_env` (a variable of a setting unset here is
        removed: a service of another home must not inherit this shell's password or URL)."""
        env = dict(os.environ if base is None else base)
        for f in fields(self):
            env.pop(env_name(f.name), None)
        env.update(self.as_env())
        return env

    def public_dict(self) -> dict[str, Any]:
        """Settings without secrets, for logs and ``recsys settings``."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if any(word in f.name for word in ("password", "token", "key", "secret")) and value and not f.name.endswith("_prefix"):
                value = "***"
            elif f.name.endswith("_url") and value:
                value = masked_url(value)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


class SettingError(ConfigError, ValueError):
    """One or more settings have invalid values; ``problems`` holds one message per setting.
    (A ValueError too: callers of :func:`load_settings` that predate it catch that.)"""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# Ranges of the numeric settings: (lowest, highest), None for no bound. Settings not listed take any value
# of their type (e.g. ``triton_batch_delay_us``: negative means batching off; ``seed``).
_PORT = (1, 65535)
_RANGES: dict[str, tuple[Optional[float], Optional[float]]] = {
    **{name: _PORT for name in ("redis_port", "mlflow_port", "airflow_port", "triton_http_port", "triton_grpc_port",
                                "triton_metrics_port", "api_port", "events_metrics_port", "dask_scheduler_port",
                                "postgres_port", "celery_broker_port")},
    **{name: (1, None) for name in ("validation_days", "epochs", "embedding_dim", "gpu_pool_slots", "online_batch_size",
                                    "triton_instances", "candidates_k", "recommend_default_k", "recommend_max_k",
                                    "triton_keep_versions", "batch_top_n", "batch_concurrency", "api_workers",
                                    "events_max_batch", "events_part_max_rows", "drift_consecutive_checks",
                                    "mlflow_request_timeout_seconds", "dask_workers",
                                    "dask_worker_threads")},
    "redis_cluster_node_timeout_ms": (100, None),
    **{name: (0, None) for name in ("patience", "batch_size", "lr_patience", "l2_reg", "history_length",
                                    "negatives_per_positive", "tune_trials", "tune_timeout_seconds",
                                    "online_refresh_read_budget", "online_gc_grace_seconds", "online_popularity_size",
                                    "max_per_category", "exploration_temperature", "events_max_age_hours",
                                    "events_max_future_seconds", "live_recent_items", "live_ttl_hours",
                                    "live_neighbours_k", "events_flush_seconds", "events_claim_idle_seconds",
                                    "events_land_timeout_seconds", "drift_window_days", "drift_cooldown_hours",
                                    "drift_max_rows", "mlflow_request_retries", "triton_replicas")},
    "learning_rate": (0, None),
    "validation_fraction": (0, 1),
    "dropout": (0, 1),
    "drift_share": (0, 1),
}
_OPEN_AT_ZERO = {"validation_fraction", "learning_rate", "drift_window_days"}  # 0 itself is refused too
_CHOICES = {
    "validation_split": ("time", "user", "auto"),
    "faiss_index": ("flat", "ivf", "auto"),
    "topology": ("embedded", "distributed"),
}


def _value_problems(settings: "Settings") -> list[str]:
    """Every setting whose value is out of its range or not one of its choices, one message each."""
    import math

    problems = []
    for name, (low, high) in _RANGES.items():
        value = getattr(settings, name)
        shown = f"setting {env_name(name)}={value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{shown} is not a finite number")
        elif low is not None and (value < low or (value == low and name in _OPEN_AT_ZERO)):
            problems.append(f"{shown} must be {'above' if name in _OPEN_AT_ZERO else 'at least'} {low}"
                            + (f" and at most {high}" if high is not None else ""))
        elif high is not None and value > high:
            problems.append(f"{shown} must be at most {high}" + (f" (a port is {low} to {high})" if (low, high) == _PORT else ""))
    for name, choices in _CHOICES.items():
        value = getattr(settings, name)
        if value not in choices:
            problems.append(f"setting {env_name(name)}={value!r} is not one of {', '.join(choices)}")
    if settings.triton_replicas >= 0 and settings.triton_url is None and max(settings.triton_ports(settings.triton_replica_count - 1)) > _PORT[1]:
        problems.append(f"setting {env_name('triton_replicas')}={settings.triton_replica_count}: the last replica's ports "
                        f"{settings.triton_ports(settings.triton_replica_count - 1)} pass {_PORT[1]} (replica n adds 3n)")
    if settings.triton_url is not None and not _csv(settings.triton_url):
        problems.append(f"setting {env_name('triton_url')}={settings.triton_url!r} names no URL")
    if settings.recommend_default_k > settings.recommend_max_k:
        problems.append(f"setting {env_name('recommend_default_k')}={settings.recommend_default_k} is above "
                        f"{env_name('recommend_max_k')}={settings.recommend_max_k}")
    if not settings.event_type_list:
        problems.append(f"setting {env_name('event_types')}={settings.event_types!r} names no event type")
    if not _BYTES.fullmatch(settings.dask_worker_memory.strip()):
        problems.append(f"setting {env_name('dask_worker_memory')}={settings.dask_worker_memory!r} is not an amount of "
                        "memory like 4GiB or 500MB")
    return problems


# An amount of memory as Dask's ``parse_bytes`` reads it (``4GiB``, ``500 MB``, ``2e9``); the control plane has no Dask.
_BYTES = re.compile(r"(?i)auto|\d+(\.\d*)?(e\d+)?\s*([kmgtp]i?b?|b)?")


# Variables with the settings' prefix that are not settings: read by the CLI (RECSYS_DEBUG), the
# Merlin re-exec (RECSYS_IN_MERLIN_RUNTIME) and the UI tests; anything else is most likely a typo.
NON_SETTING_VARIABLES = frozenset({"RECSYS_DEBUG", "RECSYS_IN_MERLIN_RUNTIME", "RECSYS_TEST_ARTIFACTS", "RECSYS_CHROMIUM"})


def unknown_variables(environ: Optional[dict[str, str]] = None) -> list[str]:
    """One message per ``RECSYS_*`` variable that is no setting (a typo is otherwise silently ignored),
    with the closest setting's variable as a suggestion."""
    import difflib

    environ = os.environ if environ is None else environ
    known = {env_name(f.name) for f in fields(Settings)}
    messages = []
    for variable in sorted(environ):
        if variable.startswith("RECSYS_") and variable not in known and variable not in NON_SETTING_VARIABLES:
            close = difflib.get_close_matches(variable, sorted(known), n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]}?)" if close else " (`recsys settings` lists them)"
            messages.append(f"{variable} is not a setting and is ignored{hint}")
    return messages


def _csv(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _url_host(url: str) -> Optional[str]:
    from urllib.parse import urlsplit

    host = urlsplit(url if "://" in url else f"http://{url}").hostname
    return f"[{host}]" if host and ":" in host else host


def masked_url(url: str) -> str:
    """``url`` as messages may show it: ``rediss://:secret@host:6380/0`` -> ``rediss://:***@host:6380/0``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)  # the host as written ([::1] stays)
    return urlunsplit(parts._replace(netloc=netloc))


def env_name(name: str) -> str:
    """The environment variable of setting ``name`` (``RECSYS_<NAME>``; MLflow's own for its client's URI and user)."""
    return name.upper() if name.startswith("mlflow_tracking_") else f"RECSYS_{name.upper()}"


def _parse(raw: str, annotation: Any, name: str) -> Any:
    target = annotation
    if getattr(annotation, "__origin__", None) is not None:  # Optional[X]
        target = next(a for a in annotation.__args__ if a is not type(None))
    try:
        if target is bool:
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if target is Path:
            return Path(raw).expanduser()
        return target(raw)
    except ValueError:
        raise SettingError(
            [f"setting {env_name(name)}={raw!r} is not a valid {getattr(target, '__name__', target)}"]
        ) from None


def load_settings(environ: Optional[dict[str, str]] = None, **overrides: Any) -> Settings:
    """Build settings from ``environ`` (default ``os.environ``); keyword overrides win.

    Raises :class:`SettingError` naming every variable whose value is invalid (all of them at once)."""
    environ = os.environ if environ is None else environ
    hints = get_type_hints(Settings)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields(Settings):
        raw = environ.get(env_name(f.name))
        if raw is not None and raw != "" and f.name not in overrides:
            try:
                values[f.name] = _parse(raw, hints[f.name], f.name)
            except SettingError as exc:
                problems.extend(exc.problems)
    values.update(overrides)
    try:
        settings = Settings(**values)
    except SettingError as exc:
        problems.extend(exc.problems)
    if problems:
        raise SettingError(problems)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def replace(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)
