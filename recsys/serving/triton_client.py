"""The one way this project connects to Triton: every caller (model control, publishing's smoke test,
``recsys recommend``, the batch job, the benchmarks' glue) builds its client here.

One URL parser: each of the settings' ``triton_endpoints`` (``http://host:port`` or ``https://...``, and its
gRPC ``host:port``) becomes an :class:`Endpoint`; the scheme says TLS. Several endpoints are replicas serving the
same repository: model control acts on each (:mod:`recsys.serving.control`), requests are spread over them by
:class:`Replicas` (round-robin; a replica that refuses connections is skipped). One timeout policy:

- :data:`REQUEST_TIMEOUT_S` for inference and health calls (a request that takes longer is broken);
- :data:`CONTROL_TIMEOUT_S` for the repository API (loading a SavedModel or a FAISS index on a
  busy machine takes minutes, and Triton answers ``load`` only once the model is READY).

TLS: an ``https://`` ``triton_url`` switches TLS on for both protocols; ``triton_ca_file`` (a PEM
bundle) verifies a private CA's certificate.

Rejected: a client per caller (four existed, with 30 s, 120 s and 300 s timeouts and two ways of
stripping the scheme, and gRPC never used TLS).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from recsys.settings import Settings, get_settings

REQUEST_TIMEOUT_S = 120.0
"""Inference: generous for a 2-core machine under load, short enough to surface a hang."""
HEALTH_TIMEOUT_S = 10.0
"""Health and readiness probes: they are polled in loops with their own deadlines, so a hung Triton
must answer "not ready" quickly instead of stalling the loop."""
CONTROL_TIMEOUT_S = 300.0
"""Model control (load / unload / repository index): a load answers only once the model is READY."""
REFUSED_PAUSE_S = 2.0
""":class:`Replicas`: a replica that refused a connection gets no request for this long (it is tried again
after, so a restarted replica takes its share back)."""

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    """Where Triton listens, parsed once from the settings."""

    host: str
    http_port: int
    grpc_port: int
    tls: bool
    ca_file: Optional[str] = None
    replica: int = 0
    """Its place in the settings' ``triton_endpoints`` (0-based)."""
    replicas: int = 1
    """How many replicas there are."""

    @property
    def url(self) -> str:
        """The HTTP base URL (``http://host:port``), as messages show it."""
        return f"{'https' if self.tls else 'http'}://{self.http}"

    def __str__(self) -> str:
        """``Triton at <url>``, plus ``(replica 2 of 2)`` when there are several: what messages name."""
        return f"Triton at {self.url}" + (f" (replica {self.replica + 1} of {self.replicas})" if self.replicas > 1 else "")

    @property
    def http(self) -> str:
        """``host:port`` of the HTTP endpoint (what tritonclient.http takes: no scheme)."""
        return f"{self._host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self._host}:{self.grpc_port}"

    @property
    def _host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address in brackets


def endpoints(settings: Optional[Settings] = None) -> list[Endpoint]:
    """Every Triton replica of the settings (``triton_endpoints``), in order."""
    s = settings or get_settings()
    found = []
    ca_file = str(s.triton_ca_file) if s.triton_ca_file else None
    for n, (http, grpc) in enumerate(s.triton_endpoints):
        parts = urllib.parse.urlsplit(http if "://" in http else f"http://{http}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        found.append(Endpoint(host=parts.hostname or s.host, http_port=port, grpc_port=int(grpc.rsplit(":", 1)[1]),
                              tls=tls, ca_file=ca_file, replica=n, replicas=len(s.triton_endpoints)))
    return found


def endpoint(settings: Optional[Settings] = None) -> Endpoint:
    """The first replica (the only one by default)."""
    return endpoints(settings)[0]


def http_client(settings: Optional[Settings] = None, *, control: bool = False, health: bool = False,
                concurrency: int = 1, at: Optional[Endpoint] = None):
    """A ``tritonclient.http.InferenceServerClient`` of replica ``at`` (default the first); ``control``: the
    model-control timeout, ``health``: the probe timeout (default: the request timeout); ``concurrency``:
    connections for ``async_infer`` (the batch job)."""
    import tritonclient.http as httpclient

    where = at or endpoint(settings)
    timeout = CONTROL_TIMEOUT_S if control else HEALTH_TIMEOUT_S if health else REQUEST_TIMEOUT_S
    context = None
    if where.tls:
        # tritonclient 2.51 / geventhttpclient 2.0: a context factory verifies the certificate with
        # Python's secure defaults and sends the host name (SNI); without one, ``ssl_options`` go to
        # gevent's bare ``wrap_socket``, which sends no SNI (a TLS proxy in front of Triton needs it).
        import functools

        import gevent.ssl

        context = functools.partial(gevent.ssl.create_default_context, cafile=where.ca_file)
    return httpclient.InferenceServerClient(
        where.http, ssl=where.tls, ssl_context_factory=context, concurrency=max(1, concurrency),
        connection_timeout=timeout, network_timeout=timeout,
    )


def grpc_client(settings: Optional[Settings] = None, *, at: Optional[Endpoint] = None):
    """A ``tritonclient.grpc.InferenceServerClient`` of replica ``at`` (default the first; the low-latency path:
    ``recsys recommend``, benchmarks). Per-call deadlines are ``client_timeout=`` of each call (:data:`REQUEST_TIMEOUT_S`)."""
    import tritonclient.grpc as grpcclient

    where = at or endpoint(settings)
    root_certificates = where.ca_file if where.tls else None
    return grpcclient.InferenceServerClient(where.grpc, ssl=where.tls, root_certificates=root_certificates)


def refused(exc: BaseException) -> bool:
    """True if ``exc`` says the replica is not there (connection refused or reset, gRPC UNAVAILABLE): the
    request never reached a model, so sending it to another replica is safe."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, (ConnectionRefusedError, ConnectionResetError)):
        return True
    if isinstance(exc, InferenceServerException):
        text = f"{exc.status()} {exc.message()}"
        return "UNAVAILABLE" in text or "failed to connect" in text.lower() or "connection refused" in text.lower()
    return exc.__context__ is not None and refused(exc.__context__)  # e.g. a ServingError made of one


class Replicas:
    """One client per Triton replica and the choice of replica for each request: THE owner of spreading
    requests (``recsys recommend``, the HTTP API, the batch job and the smoke test go through it).

    Round-robin per request: with N replicas each takes 1/N of the requests (least-in-flight was not
    needed: requests are alike and replicas identical). A replica that refuses the connection is skipped,
    the request goes to the next one, and the refusing replica gets no request for :data:`REFUSED_PAUSE_S`;
    any other error (the model refused the request) is the caller's. Thread-safe as far as the clients are
    (tritonclient.grpc's are; tritonclient.http's belong to the thread that made them).

        replicas = Replicas(settings, "grpc")
        result = replicas.call(lambda client: client.infer("recsys", inputs))
    """

    def __init__(self, settings: Settings, protocol: str = "grpc", **options: Any):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.settings = settings
        self.protocol = protocol
        self.endpoints = endpoints(settings)
        self._options = options  # http_client's (e.g. concurrency)
        self._clients: dict[int, Any] = {}
        self._turn = itertools.count()
        self._refused_until = [0.0] * len(self.endpoints)
        self._lock = threading.Lock()

    def client(self, at: Endpoint):
        """The client of replica ``at`` (made once)."""
        with self._lock:
            if at.replica not in self._clients:
                self._clients[at.replica] = (grpc_client(self.settings, at=at) if self.protocol == "grpc"
                                             else http_client(self.settings, at=at, **self._options))
            return self._clients[at.replica]

    def order(self) -> list[Endpoint]:
        """The replicas in the order the next request tries them: the next in turn first, replicas that
        refused a connection lately last."""
        n = len(self.endpoints)
        start = next(self._turn) % n
        ordered = [self.endpoints[(start + i) % n] for i in range(n)]
        now = time.monotonic()
        return sorted(ordered, key=lambda e: self._refused_until[e.replica] > now)  # stable: turn order kept

    def call(self, request: Callable[[Any], T]) -> T:
        """``request(client)`` on the next replica in turn; on a refused connection, on the next one."""
        tried = self.order()
        for n, at in enumerate(tried):
            try:
                return request(self.client(at))
            except Exception as exc:
                if not refused(exc) or n == len(tried) - 1:
                    raise
                self._refused_until[at.replica] = time.monotonic() + REFUSED_PAUSE_S
                log.warning("%s refused the connection (%s): the request goes to %s", at, exc, tried[n + 1])
        raise AssertionError("unreachable: the last replica's error is raised")

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
