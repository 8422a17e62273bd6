"""The building blocks of the local stack: a managed background process and a service.

A :class:`ManagedProcess` is one long-running program that the project starts itself. It keeps
its log file and PID file in one folder (``<home>/services/<service>/``), is started detached
(its own session, so it outlives the ``recsys`` command that started it), and is stopped by
signalling its whole process group (servers fork workers).

A :class:`Service` is what a user sees in ``recsys stack status``: Redis, MLflow or Airflow. It is
either *embedded* (the project runs its processes) or *external* (the settings point at a URL
somebody else runs; then it is only health-checked).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from recsys.errors import ServiceError
from recsys.settings import Settings, env_name, masked_url

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def connect_host(bind_host: str) -> str:
    """The address a client on this machine uses to reach a server bound to ``bind_host``."""
    return LOOPBACK if bind_host in {"", "0.0.0.0", "::", "[::]"} else bind_host


_HANDED_OUT: set[int] = set()


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default 32768-60999)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nobody is bound to now, chosen outside the ephemeral range.

    Why not ``bind(0)``: the kernel then hands out a port from the ephemeral range,
    which it also gives to outgoing connections. Between choosing the port and the
    service binding it (seconds, for MLflow or Airflow), any client connection on the
    machine may take it as its local port, and the service fails with "address already
    in use" (seen in CI). Ports below the ephemeral range are only ever taken by
    listeners, and a port is never handed out twice by one process.
    """
    return free_port_block(1, host)


def free_port_block(count: int, host: str = LOOPBACK, *, also_at: int = 0) -> int:
    """The first of ``count`` consecutive free ports on ``host`` (a Redis Cluster's nodes, Triton replicas' ports),
    below the ephemeral range like :func:`free_port`. ``also_at``: each port + ``also_at`` must be free and below
    that range too (a Redis 6 cluster node's bus port is its port + 10000, not configurable)."""
    import random
    import socket

    low, high = ephemeral_port_range()
    start, end = (20000, low - 1) if low > 21000 else (high + 1, 65535)
    last_first = end - also_at - count + 1
    if last_first < start:
        raise ServiceError(f"no room for {count} ports (+{also_at}) in {start}-{end}")
    rng = random.Random()
    for _ in range(200):
        first = rng.randint(start, last_first)
        ports = [first + n for n in range(count)]
        ports += [port + also_at for port in ports] if also_at else []
        if _HANDED_OUT.intersection(ports):
            continue
        try:
            for port in ports:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        _HANDED_OUT.update(ports)
        return first
    what = "free TCP port" if count == 1 else f"{count} consecutive free ports"
    raise ServiceError(f"no {what} on {host} in {start}-{end} after 200 tries")


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True if ``GET url`` answers 2xx. Never raises."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout).is_success
    except httpx.HTTPError:
        return False


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16_384))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """One background program with its own log file and PID file in ``directory``."""

    name: str
    """Short name; also the stem of its files: ``<name>.log``, ``<name>.pid``."""
    command: list[str]
    directory: Path
    health: Callable[[], bool]
    """Answers True once the program does its job (port open, HTTP 200, ...)."""
    env: Optional[dict[str, str]] = None
    """Full environment for the program (default: this process's environment)."""
    cwd: Optional[Path] = None
    secrets: tuple[str, ...] = ()
    """Values on the command line that the log's start line shows as ``***``."""
    stop_signal: int = signal.SIGTERM
    """What asks the program to stop (Postgres: SIGINT, its fast shutdown; SIGTERM waits for every client)."""

    @property
    def log_file(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / f"{self.name}.pid"

    # --- state --------------------------------------------------------------------------
    def pid(self) -> Optional[int]:
        """PID of the running program, or None. A stale PID file is removed.

        The PID file holds the PID and the process's start time, so a PID that the kernel
        has since given to another program is not mistaken for ours.
        """
        import psutil

        try:
            pid_text, created_text = self.pid_file.read_text().split()
            pid, created = int(pid_text), float(created_text)
        except (FileNotFoundError, ValueError):
            self.pid_file.unlink(missing_ok=True)
            return None
        try:
            proc = psutil.Process(pid)
            alive = proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - created) < 1.0
        except psutil.Error:
            alive = False
        if not alive:
            _reap(pid)
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def answering(self) -> bool:
        try:
            return bool(self.health())
        except Exception:  # a health check must never break `status`
            return False

    def all_pids(self) -> list[int]:
        """The program and all its descendants (workers, task processes)."""
        import psutil

        pid = self.pid()
        if pid is None:
            return []
        try:
            return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return [pid]

    # --- start / stop -------------------------------------------------------------------
    def start(self) -> int:
        """Start the program detached (new session) unless it already runs; return its PID."""
        import psutil

        existing = self.pid()
        if existing is not None:
            return existing
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as logf:
            logf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {self.shown_command()}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd or self.directory,
                start_new_session=True,  # own process group; survives the CLI exiting
            )
        created = psutil.Process(proc.pid).create_time()
        tmp = self.pid_file.with_suffix(".pid.tmp")
        tmp.write_text(f"{proc.pid} {created}\n")
        tmp.replace(self.pid_file)
        log.info("%s: started (pid %d), log %s", self.name, proc.pid, self.log_file)
        return proc.pid

    def shown_command(self) -> str:
        """The command line for logs and status, secrets masked."""
        text = " ".join(self.command)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def wait_healthy(self, timeout: float, poll: float = 0.5) -> None:
        """Wait until the health check passes; raise :class:`ServiceError` if it exits or times out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                raise ServiceError(
                    f"{self.name} exited during start-up; see its log {self.log_file}\n"
                    f"--- last lines ---\n{tail(self.log_file)}"
                )
            if self.answering():
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} did not answer within {timeout:.0f} s; see its log {self.log_file}\n"
                    f"--- last lines ---\n{tail(self.log_file)}"
                )
            time.sleep(poll)

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout``. True if it ran."""
        return bool(stop_all([self], timeout))

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid(), "answering": self.answering(), "log": str(self.log_file)}


def stop_all(processes: list[ManagedProcess], timeout: float = 20.0) -> list[str]:
    """Stop several programs at once: signal every process group (SIGTERM, or the program's ``stop_signal``),
    wait, SIGKILL the rest.

    Stopping them together takes as long as the slowest one, not the sum. Returns the names of
    the programs that were running.
    """
    import psutil

    stopping: list[tuple[ManagedProcess, int]] = []
    family: list[psutil.Process] = []
    for proc in processes:
        pid = proc.pid()
        if pid is None:
            continue
        # Remember the descendants too: a worker that left the group must not survive us.
        try:
            leader = psutil.Process(pid)
            family += [leader] + leader.children(recursive=True)
        except psutil.Error:
            pass
        _signal_group(pid, proc.stop_signal)
        stopping.append((proc, pid))
    _gone, alive = psutil.wait_procs(family, timeout=timeout)
    if alive:
        log.warning("still running after %.0f s, sending SIGKILL: %s", timeout, [p.pid for p in alive])
        for _proc, pid in stopping:
            _signal_group(pid, signal.SIGKILL)
        for survivor in alive:
            try:
                survivor.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
    for proc, pid in stopping:
        _reap(pid)
        proc.pid_file.unlink(missing_ok=True)
        log.info("%s: stopped (pid %d)", proc.name, pid)
    return [proc.name for proc, _ in stopping]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session made the program its group's leader
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own child (else it would linger as a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@dataclass
class Service:
    """A service of the stack: embedded (we run ``processes``) or external (we only check it)."""

    settings: Settings
    name: str = ""
    start_timeout: float = 120.0
    processes: list[ManagedProcess] = field(default_factory=list)
    port_setting: str = ""
    """The setting of the port :meth:`_bind` returns, named when that port is busy (default ``<name>_port``)."""

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def embedded(self) -> bool:
        return self.settings.embedded[self.name]

    @property
    def directory(self) -> Path:
        return self.settings.services_root / self.name

    def answering(self) -> bool:
        """True if the service does its job at :attr:`url` (whoever runs it)."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the processes that are not running; do not wait. External: nothing to start."""
        if not self.embedded:
            return
        self.prepare()
        for proc in self.processes:
            if not proc.running():
                if proc is self.processes[0]:
                    self._refuse_busy_port()
                proc.start()

    def wait(self) -> None:
        """Wait until the service answers; raise :class:`ServiceError` with the log's tail if not."""
        if not self.embedded:
            if not self.answering():
                raise ServiceError(f"external {self.name} at {masked_url(self.url)} is not answering")
            return
        for proc in self.processes:
            proc.wait_healthy(self.start_timeout)

    def up(self) -> None:
        """Start what is not running and wait until it answers. External: only check it."""
        self.start()
        self.wait()

    def prepare(self) -> None:
        """Create what the processes need before they start (folders, config). Idempotent."""
        self.directory.mkdir(parents=True, exist_ok=True)

    def _refuse_busy_port(self) -> None:
        """A port already answering without our process means somebody else owns it."""
        host, port = self._bind()
        if port_is_open(connect_host(host), port):
            raise ServiceError(
                f"{self.name}: port {port} on {host} is already in use by another program. "
                f"Choose another port ({self.port_variable}) or use that server as an "
                f"external one through its URL setting."
            )

    def _bind(self) -> tuple[str, int]:
        raise NotImplementedError

    @property
    def port_variable(self) -> str:
        """The variable of the setting :meth:`_bind`'s port comes from (named in errors)."""
        return env_name(self.port_setting or f"{self.name}_port")

    def down(self) -> None:
        stop_all(self.processes)

    def status(self) -> dict[str, Any]:
        main = self.processes[0] if self.embedded and self.processes else None
        return {
            "url": masked_url(self.url),
            "embedded": self.embedded,
            "answering": self.answering(),
            "pid": main.pid() if main else None,
            "log": str(main.log_file) if main else None,
        }

    def all_pids(self) -> list[int]:
        return [pid for proc in self.processes for pid in proc.all_pids()]
