"""A ``recsys.jobs`` function run in its own interpreter process, the way an Airflow task runs it (the Merlin
runtime's for ``external_python`` tasks, the control plane's for the others), so a test can kill it for real.

``Job(...).start()`` runs the function; ``pause_at``: the job stops at the first ``recsys`` log line holding
that text until :meth:`Job.resume` (meanwhile the test kills the job, or a service, at that exact point);
``kill_before_report``: the job SIGKILLs itself once the function returned, before it prints its result
(the task's work done, its XCom never written: the worst case for duplicates).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

_DRIVER = r'''
import json, logging, os, signal, sys
from recsys import jobs

pause_at = os.environ.get("FAULT_PAUSE_AT")

class Pause(logging.Handler):
    def emit(self, record):
        global pause_at
        if pause_at and pause_at in record.getMessage():
            pause_at = None
            print("PAUSED", flush=True)
            sys.stdin.readline()  # the test's go

logging.getLogger("recsys").addHandler(Pause())
logging.getLogger("recsys").setLevel(logging.INFO)
result = getattr(jobs, sys.argv[1])(*json.loads(sys.argv[2]))
if os.environ.get("FAULT_KILL_BEFORE_REPORT"):
    os.kill(os.getpid(), signal.SIGKILL)
print("RESULT " + json.dumps(result, default=str), flush=True)
'''


class Job:
    """One try of a job: ``python -c <driver> <function> <json args>`` with ``env``; stderr (the task log) in ``log``."""

    def __init__(self, python: Path, env: dict[str, str], log: Path, function: str, *args: Any,
                 pause_at: Optional[str] = None, kill_before_report: bool = False):
        self.command = [str(python), "-c", _DRIVER, function, json.dumps(list(args))]
        self.env = {**env, "FAULT_PAUSE_AT": pause_at or "", "FAULT_KILL_BEFORE_REPORT": "1" if kill_before_report else ""}
        self.log = log
        self.proc: Optional[subprocess.Popen] = None
        self.result: Optional[dict] = None
        self.out = ""  # its stdout after any pause (the ETL's progress lines are printed there)

    def start(self) -> "Job":
        with open(self.log, "w") as stderr:
            self.proc = subprocess.Popen(self.command, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=stderr, text=True)
        return self

    def wait_paused(self) -> None:
        """Until the job holds at its ``pause_at`` line (fails if it ended first)."""
        for line in self.proc.stdout:
            if line.strip() == "PAUSED":
                return
        raise AssertionError(f"the job ended (exit {self.proc.wait()}) before pausing:\n{self.stderr()[-3000:]}")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def resume(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> int:
        """The exit code (fails after ``timeout`` s: the job hangs); keeps its ``result`` if it printed one."""
        out, _ = self.proc.communicate(timeout=timeout)
        self.out = out
        results = [line[len("RESULT "):] for line in out.splitlines() if line.startswith("RESULT ")]
        self.result = json.loads(results[-1]) if results else None
        return self.proc.returncode

    def stderr(self) -> str:
        return self.log.read_text()

    def run(self, timeout: float) -> dict:
        """Start, wait, assert success; the function's result."""
        self.start()
        code = self.wait(timeout)
        assert code == 0 and self.result is not None, f"exit {code}:\n{self.stderr()[-3000:]}"
        return self.result


def kill_service(service) -> None:
    """SIGKILL an embedded service's whole process group (``kill -9``: the server and its workers)."""
    pid = service.processes[0].pid()
    assert pid, f"{service.name} is not running"
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while service.processes[0].pid() and time.monotonic() < deadline:
        time.sleep(0.1)
