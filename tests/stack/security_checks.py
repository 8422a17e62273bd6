"""Security by default, checked on a running stack: loopback only, secrets private and never logged.

Called by ``test_stack.py``'s whole-stack test (every service up in a home of its own), so no second
stack is started for them. Every secret the stack generated is looked for in every log file under the
home's services folder (service logs, Airflow's component and task logs).
"""

from __future__ import annotations

import ipaddress
import stat

import psutil
import pytest

from recsys import credentials, stack


def _listening(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every listening TCP socket of these processes and their children."""
    family = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            family |= {proc, *proc.children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
    found = []
    for proc in family:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.pid, proc.name(), conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (Triton's gRPC on a dual-stack socket)
    return (mapped or ip).is_loopback


def assert_every_listening_socket_is_on_loopback(s) -> None:
    sockets = _listening(stack.pids(s))
    ports = {port for *_, port in sockets}
    expected = {s.redis_port, s.mlflow_port, s.airflow_port, s.triton_http_port, s.triton_grpc_port,
                s.triton_metrics_port, s.api_port, s.events_metrics_port}
    assert expected <= ports, f"ports not found listening: {sorted(expected - ports)}"
    public = [sock for sock in sockets if not _loopback(sock[2])]
    assert not public, f"listening beyond loopback (pid, process, address, port): {public}"


def assert_every_service_needs_its_secret_and_no_log_holds_one(s) -> None:
    import httpx
    import redis

    # each service refuses a caller without its secret
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=s.host, port=s.redis_port).ping()
    assert httpx.get(f"{s.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401
    assert httpx.post(f"{s.triton_http}/v2/repository/index").status_code == 403
    assert httpx.get(f"{s.triton_http}/v2/health/ready").status_code == 200  # inference and health stay open
    assert httpx.get(f"{s.api}/v1/items/1/similar").status_code == 401
    # Airflow signs its tokens with a secret of >= 64 bytes (token_urlsafe: 4 characters per 3 bytes)
    assert len(credentials.ensure(s, credentials.AIRFLOW_JWT_SECRET)) >= 86

    values = {}
    for secret in credentials.ALL:
        if secret.service not in stack.topology_services(s):
            continue  # the distributed topology's (Postgres, the Celery broker)
        path = secret.path(s)
        assert path.exists(), f"{secret.service}: no generated secret at {path}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        values[str(path)] = credentials.read(path)
    assert stat.S_IMODE((s.services_root / "redis" / "redis.conf").stat().st_mode) == 0o600
    assert stat.S_IMODE((s.services_root / "mlflow" / "basic_auth.ini").stat().st_mode) == 0o600

    logs = [p for p in s.services_root.rglob("*.log") if p.is_file()]
    assert len(logs) >= 8  # redis, mlflow, 4 Airflow components, triton, api, events (+ task logs)
    leaks = [(str(log), where) for log in logs for where, value in values.items()
             if value in log.read_text(errors="replace")]
    assert not leaks, f"secrets found in logs (log, secret file): {leaks}"
