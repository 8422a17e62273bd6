"""The one way this project connects to Triton: every caller (model control, publishing's smoke test,
``recsys recommend``, the batch job, the benchmarks' glue) builds its client here.

One URL parser: the settings' ``triton_http`` (``http://host:port`` or ``https://...``) names the
host, the scheme says TLS, ``triton_grpc_port`` the gRPC port on the same host. One timeout policy:

- :data:`REQUEST_TIMEOUT_S` for inference and health calls (a request that takes longer is broken);
- :data:`CONTROL_TIMEOUT_S` for the repository API (loading a SavedModel or a FAISS index on a
  busy machine takes minutes, and Triton answers ``load`` only once the model is READY).

TLS: an ``https://`` ``triton_url`` switches TLS on for both protocols; ``triton_ca_file`` (a PEM
bundle) verifies a private CA's certificate.

Rejected: a client per caller (four existed, with 30 s, 120 s and 300 s timeouts and two ways of
stripping the scheme, and gRPC never used TLS).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Optional

from recsys.settings import Settings, get_settings

REQUEST_TIMEOUT_S = 120.0
"""Inference: generous for a 2-core machine under load, short enough to surface a hang."""
HEALTH_TIMEOUT_S = 10.0
"""Health and readiness probes: they are polled in loops with their own deadlines, so a hung Triton
must answer "not ready" quickly instead of stalling the loop."""
CONTROL_TIMEOUT_S = 300.0
"""Model control (load / unload / repository index): a load answers only once the model is READY."""


@dataclass(frozen=True)
class Endpoint:
    """Where Triton listens, parsed once from the settings."""

    host: str
    http_port: int
    grpc_port: int
    tls: bool
    ca_file: Optional[str] = None

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


def endpoint(settings: Optional[Settings] = None) -> Endpoint:
    s = settings or get_settings()
    parts = urllib.parse.urlsplit(s.triton_http if "://" in s.triton_http else f"http://{s.triton_http}")
    tls = parts.scheme == "https"
    host = parts.hostname or s.host
    port = parts.port or (443 if tls else 80)
    ca_file = str(s.triton_ca_file) if s.triton_ca_file else None
    return Endpoint(host=host, http_port=port, grpc_port=s.triton_grpc_port, tls=tls, ca_file=ca_file)


def http_client(settings: Optional[Settings] = None, *, control: bool = False, health: bool = False,
                concurrency: int = 1):
    """A ``tritonclient.http.InferenceServerClient``; ``control``: the model-control timeout, ``health``: the
    probe timeout (default: the request timeout); ``concurrency``: connections for ``async_infer`` (the batch job)."""
    import tritonclient.http as httpclient

    where = endpoint(settings)
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


def grpc_client(settings: Optional[Settings] = None):
    """A ``tritonclient.grpc.InferenceServerClient`` (the low-latency path: ``recsys recommend``,
    benchmarks). Per-call deadlines are ``client_timeout=`` of each call (:data:`REQUEST_TIMEOUT_S`)."""
    import tritonclient.grpc as grpcclient

    where = endpoint(settings)
    root_certificates = where.ca_file if where.tls else None
    return grpcclient.InferenceServerClient(where.grpc, ssl=where.tls, root_certificates=root_certificates)
