"""Triton Inference Server: the real ``tritonserver`` 2.51 binary bundled in the nvidia-pytriton wheel.

The wheel lives in the Merlin runtime. ``prepare()`` copies the server (binary, python backend,
local cache) and the python-backend stub for the Merlin interpreter's Python version into
``<home>/services/triton/server/`` once. The server then runs with:

- ``LD_LIBRARY_PATH``: the wheel's bundled libraries + the folder holding ``libpython3.X.so``;
- the Merlin runtime's ``bin/`` first on ``PATH``, so the stub's Python imports that environment's
  TensorFlow, FAISS and redis-py (the four-stage model runs there);
- ``--model-control-mode=explicit`` with ``--load-model=*``: at start the server loads what the
  repository serves (each model's config pins its published version), so a restarted stack keeps
  serving; publishing loads new versions through the repository API
  (``POST /v2/repository/models/<name>/load``);
- HTTP, gRPC and metrics bound to ``settings.host`` on the ports of the settings;
- the repository API (load, unload, index) and the server's logging and trace settings behind a key
  (``--http-restricted-api`` / ``--grpc-restricted-protocol``), generated at the first start into
  ``services/triton/control_key`` (mode 0600): only publishing sends it; inference stays open on
  loopback. Triton takes the key only on its command line, where ``ps`` shows it to local users of
  this machine (not to the network): docs/security.md;
- the settings as environment variables, so the models find Redis (``recsys.settings``).

Replicas (``settings.triton_replica_count``: two in the distributed topology): N servers of the same copy reading
the same repository, replica n on the settings' ports + 3n, each a managed process of its own (``triton-1`` ..
``triton-N``: its log and PID file in ``services/triton/``; one replica keeps the name ``triton``). The service
answers when every replica does. Publishing loads each replica (``recsys.serving.control``).

Only the python backend ships in that wheel; see docs/serving.md for the GPU flavour.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

from recsys.errors import ServiceError
from recsys.stack.service import ManagedProcess, Service, connect_host, http_ok

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TritonBundle:
    """Where the pieces of the wheel's Triton are, as seen by the Merlin interpreter."""

    server_dir: Path
    """``site-packages/pytriton/tritonserver``: bin/, backends/, caches/, python_backend_stubs/."""
    libs_dir: Path
    """``site-packages/nvidia_pytriton.libs``: the shared libraries the binary links against."""
    python_libdir: Path
    """Folder holding ``libpython3.X.so`` of the Merlin interpreter."""
    python_version: str
    """``3.11``: picks the stub."""
    bin_dir: Path
    """The Merlin runtime's ``bin/`` (first on PATH for the stub)."""


_PROBE = """
import json, sys, sysconfig, importlib.util
from pathlib import Path
spec = importlib.util.find_spec("pytriton")
server = Path(spec.origin).parent / "tritonserver" if spec else None
print(json.dumps({
    "server_dir": str(server) if server else "",
    "libs_dir": str(server.parents[1] / "nvidia_pytriton.libs") if server else "",
    "python_libdir": sysconfig.get_config_var("LIBDIR"),
    "python_version": f"{sys.version_info[0]}.{sys.version_info[1]}",
}))
"""


@lru_cache(maxsize=4)
def find_bundle(merlin_python: Path) -> TritonBundle:
    """Locate the Triton bundled in the nvidia-pytriton wheel of the Merlin runtime (``merlin_python``)."""
    if not Path(merlin_python).exists():
        raise ServiceError(
            f"the embedded Triton runs from the Merlin runtime, but {merlin_python} does not exist; "
            "set RECSYS_MERLIN_PYTHON, or RECSYS_TRITON_URL to use an external Triton"
        )
    try:
        out = subprocess.run(
            [str(merlin_python), "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        raise ServiceError(f"could not inspect the Merlin runtime {merlin_python}: {exc}") from None
    info = json.loads(out.strip().splitlines()[-1])
    server = Path(info["server_dir"]) if info["server_dir"] else None
    if server is None or not (server / "bin" / "tritonserver").exists():
        raise ServiceError(
            f"the Merlin runtime {merlin_python} has no nvidia-pytriton wheel with a tritonserver binary; "
            "rebuild it (`uv sync --extra merlin`) or set RECSYS_TRITON_URL to an external Triton"
        )
    return TritonBundle(
        server_dir=server,
        libs_dir=Path(info["libs_dir"]),
        python_libdir=Path(info["python_libdir"]),
        python_version=info["python_version"],
        # not resolved: the venv's bin/ (its python is a symlink to the base interpreter)
        bin_dir=Path(merlin_python).parent,
    )


@dataclass
class TritonService(Service):
    name: str = "triton"
    start_timeout: float = 90.0

    def __post_init__(self) -> None:
        from recsys.serving.triton_client import endpoints

        self.replicas = endpoints(self.settings)
        if self.embedded:
            count = len(self.replicas)
            self.processes = [
                ManagedProcess("triton" if count == 1 else f"triton-{n + 1}", self._command(n), self.directory,
                               health=partial(self._replica_answering, n), env=None,
                               secrets=(self._control_key(),))  # read once: cached below
                for n in range(count)
            ]

    # --- layout -----------------------------------------------------------------------
    @property
    def server_copy(self) -> Path:
        """Our copy of the server: bin/tritonserver, backends/python (+ the stub), caches/."""
        return self.directory / "server"

    @property
    def url(self) -> str:
        return self.settings.triton_http

    def _command(self, replica: int) -> list[str]:
        s = self.settings
        http, grpc, metrics = s.triton_ports(replica)
        return [
            str(self.server_copy / "bin" / "tritonserver"),
            f"--model-repository={s.triton_repo}",
            f"--backend-directory={self.server_copy / 'backends'}",
            f"--cache-directory={self.server_copy / 'caches'}",
            "--model-control-mode=explicit",
            "--load-model=*",  # what the repository serves comes back after a restart
            f"--http-address={s.host}",
            f"--http-port={http}",
            f"--grpc-address={s.host}",
            f"--grpc-port={grpc}",
            f"--metrics-address={s.host}",
            f"--metrics-port={metrics}",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            # a model that fails to load must not take the server down with it
            "--exit-on-error=false",
            "--log-verbose=0",
            *self._restrictions(),
        ]

    def _control_key(self) -> str:
        from recsys import credentials

        if not hasattr(self, "_key"):  # one read of the key file per service object (command + log mask)
            self._key = credentials.ensure(self.settings, credentials.TRITON_CONTROL_KEY)
        return self._key

    def _restrictions(self) -> list[str]:
        from recsys.serving.control import CONTROL_HEADER, RESTRICTED_APIS

        key = self._control_key()
        apis = ",".join(RESTRICTED_APIS)
        return [f"--http-restricted-api={apis}:{CONTROL_HEADER}={key}",
                f"--grpc-restricted-protocol={apis}:{CONTROL_HEADER}={key}"]

    def prepare(self) -> None:
        """Copy the server out of the wheel (once) and make the repository folder; set the environment."""
        s = self.settings
        bundle = find_bundle(s.merlin_python)
        self.directory.mkdir(parents=True, exist_ok=True)
        s.triton_repo.mkdir(parents=True, exist_ok=True)
        stub = bundle.server_dir / "python_backend_stubs" / bundle.python_version / "triton_python_backend_stub"
        if not stub.exists():
            raise ServiceError(f"no python-backend stub for Python {bundle.python_version} in {bundle.server_dir}")
        marker = self.server_copy / "source.json"
        source = {"server_dir": str(bundle.server_dir), "python_version": bundle.python_version}
        if not marker.exists() or json.loads(marker.read_text()) != source:
            tmp = self.server_copy.with_name("server.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            for part in ("bin", "backends", "caches"):
                shutil.copytree(bundle.server_dir / part, tmp / part, symlinks=True)
            shutil.copy2(stub, tmp / "backends" / "python" / "triton_python_backend_stub")
            (tmp / "source.json").write_text(json.dumps(source))
            shutil.rmtree(self.server_copy, ignore_errors=True)
            tmp.rename(self.server_copy)
        env = s.child_env()
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(bundle.libs_dir), str(bundle.python_libdir), env.get("LD_LIBRARY_PATH", "")) if p
        )
        env["PATH"] = os.pathsep.join([str(bundle.bin_dir), env.get("PATH", "")])
        # A control-plane virtualenv's marker must not leak into the Merlin stub.
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
        for proc in self.processes:
            proc.env = env

    def start(self) -> None:
        """Start the replicas that do not run (each on its own ports); the others are left alone."""
        if not self.embedded or all(proc.running() for proc in self.processes):
            return
        self._end_orphaned_stubs()
        self._recover_interrupted_switch()
        self.prepare()
        for n, proc in enumerate(self.processes):
            if not proc.running():
                self._refuse_busy_ports(n)
                proc.start()

    def _recover_interrupted_switch(self) -> None:
        """The repository back to what its publish history says serves before a server loads it
        (``--load-model=*``): a publish or rollback killed half-way must not make a restart serve a
        version that was never smoke-tested. Skipped while a publish holds the lock (it is alive).

        With replicas, one may still run while another is restarted: it may have loaded the killed switch's
        version, so the history's models are reloaded on it (all replicas then serve the same version)."""
        from recsys.layout import TritonRepository
        from recsys.serving import history
        from recsys.serving.control import load_model
        from recsys.serving.publish import recover_interrupted

        repo = TritonRepository(self.settings.triton_repo)
        with history.publish_lock(repo, wait=False) as held:
            if not held or not recover_interrupted(repo):
                return
            served = history.served(repo)
            for proc, at in zip(self.processes, self.replicas):
                if served and proc.running():
                    log.warning("triton: %s may serve the interrupted switch's version: reloading %s v%s on it",
                                at, ", ".join(served["models"]), served["version"])
                    for model in served["models"]:
                        load_model(self.settings, model, at=at)

    def _end_orphaned_stubs(self) -> None:
        """SIGKILL the python-backend stubs a killed server of this home left behind.

        A ``tritonserver`` killed hard (SIGKILL, OOM killer) does not take its stubs along: a stub
        busy in a model's ``initialize`` lives on, holding its shared memory and the load request's
        connection (inherited at fork), so the publish that sent it would wait for its timeout. The
        stubs of this home's server copy whose parent is not a server of that copy are those.
        """
        import psutil

        stub = str(self.server_copy / "backends" / "python" / "triton_python_backend_stub")
        server = str(self.server_copy / "bin" / "tritonserver")
        orphans = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if (proc.info["cmdline"] or [""])[0] != stub:
                    continue
                parent = proc.parent()
                if parent is None or (parent.cmdline() or [""])[0] != server:
                    orphans.append(proc)
            except psutil.Error:
                continue  # ended meanwhile
        for proc in orphans:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if orphans:
            psutil.wait_procs(orphans, timeout=10)
            log.warning("triton: ended %d python-backend stub(s) left by a server that was killed: %s",
                        len(orphans), [p.pid for p in orphans])

    def _refuse_busy_ports(self, replica: int) -> None:
        """A port of the replica already in use without our process means somebody else owns it."""
        for variable, port in zip(("HTTP", "GRPC", "METRICS"), self.settings.triton_ports(replica)):
            if _port_busy(self.settings.host, port):
                where = f" (replica {replica + 1}'s: the settings' ports + {3 * replica})" if replica else ""
                raise ServiceError(
                    f"triton: port {port} on {self.settings.host}{where} is already in use by another program; "
                    f"choose other ports (RECSYS_TRITON_{variable}_PORT; replica n uses each + 3n)"
                )

    def _replica_answering(self, replica: int) -> bool:
        """Replica ``replica`` is up and serves every model of the version the publish history says serves
        (before the first publish: Triton's own readiness).

        Not Triton's strict readiness alone: it stays false after any failed load (the failed version is
        listed UNAVAILABLE until a restart, seen with 2.51), so one refused publish would make the replica
        look down for good. A replica opens its ports only after loading what the repository serves
        (``--load-model=*``), so an answering replica is done starting."""
        from recsys.layout import TritonRepository
        from recsys.serving import history
        from recsys.serving.control import model_ready, server_live

        at = self.replicas[replica]
        served = history.served(TritonRepository(self.settings.triton_repo)) if self.embedded else None
        if served is None:
            return http_ok(f"{at.url}/v2/health/ready")
        return server_live(self.settings, at) and all(
            model_ready(self.settings, model, int(served["version"]), at) for model in served["models"])

    def answering(self) -> bool:
        """Every replica is ready."""
        return all(self._replica_answering(n) for n in range(len(self.replicas)))

    def status(self) -> dict:
        report = super().status()
        report["grpc"] = self.settings.triton_grpc
        report["repository"] = str(self.settings.triton_repo) if self.embedded else None
        if len(self.replicas) > 1:  # `stack status` shows a row per replica
            processes = self.processes if self.embedded else [None] * len(self.replicas)
            report["url"] = ",".join(at.url for at in self.replicas)
            report["pid"] = report["log"] = None
            report["components"] = {
                f"triton-{at.replica + 1}": {"url": at.url, "grpc": at.grpc, "answering": self._replica_answering(at.replica),
                                             "pid": proc.pid() if proc else None, "log": str(proc.log_file) if proc else None,
                                             "embedded": self.embedded}
                for at, proc in zip(self.replicas, processes)
            }
        return report


def _port_busy(host: str, port: int) -> bool:
    from recsys.stack.service import port_is_open

    return port_is_open(connect_host(host), port)
