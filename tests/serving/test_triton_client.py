"""The one Triton client factory: where it connects, and TLS (a private CA's certificate verified, the
host name sent) for both protocols, against local TLS servers with a certificate made here."""

from __future__ import annotations

import http.server
import ssl
import threading

import pytest

from recsys.serving import triton_client
from recsys.settings import load_settings
from shared_helpers import write_test_ca


def test_the_endpoint_comes_from_the_triton_url():
    plain = triton_client.endpoint(load_settings({}, triton_http_port=8300, triton_grpc_port=8301))
    assert (plain.http, plain.grpc, plain.tls, plain.ca_file) == ("127.0.0.1:8300", "127.0.0.1:8301", False, None)
    tls = triton_client.endpoint(load_settings({}, triton_url="https://triton.example", triton_grpc_port=9001,
                                               triton_ca_file="/etc/ca.pem"))
    assert (tls.http, tls.grpc, tls.tls, tls.ca_file) == ("triton.example:443", "triton.example:9001", True, "/etc/ca.pem")
    ipv6 = triton_client.endpoint(load_settings({}, triton_url="http://[::1]:8000", triton_grpc_port=8001))
    assert (ipv6.http, ipv6.grpc) == ("[::1]:8000", "[::1]:8001")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A private CA and a server certificate it signed for localhost: (ca.pem, server.pem, server.key)."""
    return write_test_ca(tmp_path_factory.mktemp("tls"))


def test_https_verifies_the_private_ca_and_sends_the_host_name(certificates):
    ca, cert, key = certificates

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # /v2/health/ready
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://localhost:{server.server_address[1]}"
    try:
        client = triton_client.http_client(load_settings({}, triton_url=url, triton_ca_file=ca), control=True)
        try:
            assert client.is_server_ready()
        finally:
            client.close()
        assert names == ["localhost"]  # SNI: what a TLS proxy in front of Triton routes by

        unverified = triton_client.http_client(load_settings({}, triton_url=url))  # the system CAs only
        try:
            with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
                unverified.is_server_ready()
        finally:
            unverified.close()
    finally:
        server.shutdown()
        server.server_close()


def test_grpc_over_tls_verifies_the_private_ca(certificates):
    from concurrent import futures

    import grpc
    from tritonclient.utils import InferenceServerException

    ca, cert, key = certificates
    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    server.start()
    try:
        settings = load_settings({}, triton_url="https://localhost:1", triton_grpc_port=port, triton_ca_file=ca)
        client = triton_client.grpc_client(settings)
        try:
            # the handshake succeeded: this server simply is no Triton
            with pytest.raises(InferenceServerException, match="UNIMPLEMENTED"):
                client.is_server_live(client_timeout=10)
        finally:
            client.close()
        unverified = triton_client.grpc_client(load_settings({}, triton_url="https://localhost:1", triton_grpc_port=port))
        try:
            with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
                unverified.is_server_live(client_timeout=10)
        finally:
            unverified.close()
    finally:
        server.stop(0)
