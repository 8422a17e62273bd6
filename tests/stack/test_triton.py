"""The embedded Triton: started from the nvidia-pytriton wheel's server, explicit model control with
the repository's models loaded at start, loopback only, a model asked, restarted, stopped."""

from __future__ import annotations

import numpy as np
import pytest

from recsys import stack
from recsys.settings import load_settings
from recsys.stack.service import free_port
from shared_helpers import triton_ports


@pytest.fixture()
def triton_settings(tmp_path):
    """A home and ports of its own (Triton only; no other service is started)."""
    return load_settings({}, home=tmp_path / "home", redis_port=free_port(), **triton_ports())


@pytest.mark.timeout(300)
def test_triton_starts_loads_the_floor_model_infers_restarts_and_stops(triton_settings):
    import tritonclient.grpc as grpcclient

    from recsys.serving import control
    from recsys.serving.repository import write_floor_model
    from recsys.serving.triton_client import grpc_client

    s = triton_settings
    write_floor_model(s.triton_repo)
    try:
        timings = stack.up(s, only=["triton"])
        assert "triton" in timings
        report = stack.status(s)["triton"]
        assert report["answering"] and report["embedded"] and report["pid"]
        assert report["log"] == str(s.services_root / "triton" / "triton.log")
        assert report["grpc"] == f"127.0.0.1:{s.triton_grpc_port}"
        # the server copy with the python-backend stub for the Merlin interpreter
        assert (s.services_root / "triton" / "server" / "backends" / "python" / "triton_python_backend_stub").exists()

        # what the repository serves is loaded at start ...
        assert control.model_ready(s, "recsys_floor", 1)
        # ... and explicit model control loads (here: reloads) through the repository API
        control.load_model(s, "recsys_floor")
        assert control.model_ready(s, "recsys_floor", 1)

        assert _floor_over_http(s, b"7") == [b"7"]
        grpc = grpc_client(s)
        tensor = grpcclient.InferInput("user_id", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"u-9"], dtype=object))
        assert grpc.infer("recsys_floor", [tensor]).as_numpy("item_ids").tolist() == [b"u-9"]
        grpc.close()

        # bound to loopback only: every listening socket of the server is on 127.0.0.1
        import psutil

        pid = report["pid"]
        ports = {c.laddr for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        assert {p.port for p in ports} >= {s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port}
        assert {p.ip for p in ports} <= {"127.0.0.1", "::ffff:127.0.0.1"}  # gRPC reports the IPv4-mapped form

        # up again: a no-op
        stack.up(s, only=["triton"])
        assert stack.status(s)["triton"]["pid"] == pid

        # a restarted Triton keeps serving: stopped, started again, the repository's model answers
        # without being loaded by hand
        assert stack.down(s, only=["triton"]) == ["triton"]
        halted = stack.status(s)["triton"]
        assert not halted["answering"] and halted["pid"] is None
        stack.up(s, only=["triton"])
        restarted = stack.status(s)["triton"]
        assert restarted["answering"] and restarted["pid"] != pid
        assert control.model_ready(s, "recsys_floor", 1)
        assert _floor_over_http(s, b"after-restart") == [b"after-restart"]
    finally:
        stopped = stack.down(s, only=["triton"])
    assert stopped == ["triton"]
    assert not stack.status(s)["triton"]["answering"]


def test_external_triton_is_only_checked(tmp_path):
    from recsys.errors import ServiceError

    s = load_settings({}, home=tmp_path / "home", triton_url=f"http://127.0.0.1:{free_port()}")
    assert stack.status(s)["triton"]["embedded"] is False
    with pytest.raises(ServiceError, match="external service"):
        stack.up(s, only=["triton"])
    assert not (s.services_root / "triton").exists()


def test_busy_port_is_refused(triton_settings):
    import socket

    from recsys.errors import ServiceError

    s = triton_settings
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", s.triton_grpc_port))
        sock.listen(1)
        with pytest.raises(ServiceError, match=str(s.triton_grpc_port)):
            stack.up(s, only=["triton"])


def _floor_over_http(s, user: bytes) -> list:
    """``recsys_floor``'s answer over HTTP for one user id (the floor model echoes it)."""
    import numpy as np
    import tritonclient.http as httpclient

    from recsys.serving.triton_client import http_client

    http = http_client(s)
    try:
        tensor = httpclient.InferInput("user_id", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([user], dtype=object))
        return http.infer("recsys_floor", [tensor]).as_numpy("item_ids").tolist()
    finally:
        http.close()
