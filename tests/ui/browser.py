"""A real headless Chromium (Debian's ``chromium`` package), driven over the DevTools protocol.

Only what the UI test needs: open a URL, evaluate JavaScript, type, take a screenshot. The protocol
is JSON over a WebSocket (``websockets``, already in the control environment); no browser download,
no selenium. Flags as in docs/notes: headless, no sandbox (CI runs as root), no GPU, no background
networking, a fresh profile directory.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "install it with `make chromium` (runs `apt-get install -y chromium`, needs root)"


class BrowserError(AssertionError):
    """The browser did not do what the test asked (an assertion failure, with what it saw)."""


def chromium_binary() -> str:
    """Path of the system Chromium; fails (never skips) with how to install it."""
    for name in (os.environ.get("RECSYS_CHROMIUM"), *CHROMIUM_NAMES):
        if name and (found := shutil.which(name)):
            return found
    raise BrowserError(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}): {INSTALL_HINT}")


class Chromium:
    """``with Chromium(profile_dir) as browser: browser.open(url); browser.evaluate("document.title")``."""

    def __init__(self, profile_dir: Path, width: int = 1400, height: int = 1000) -> None:
        self.profile_dir = Path(profile_dir)
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.profile_dir / "chromium.log"
        self.size = (width, height)
        self._ids = itertools.count(1)
        self._process: Optional[subprocess.Popen] = None
        self._socket = None

    # --- life cycle -----------------------------------------------------------------------------
    def __enter__(self) -> "Chromium":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self, timeout: float = 30.0) -> None:
        from websockets.sync.client import connect

        command = [
            chromium_binary(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-extensions",
            "--no-first-run",
            f"--user-data-dir={self.profile_dir}",
            f"--window-size={self.size[0]},{self.size[1]}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
            "about:blank",
        ]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        port_file = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"Chromium did not start (exit {self._process.poll()}); log {self.log_path}:\n{self._log_tail()}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [t for t in json.load(response) if t["type"] == "page"]
        self._socket = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=10).__enter__()  # entered like `with connect(...)`; closed in close()
        self.send("Page.enable")
        self.send("Runtime.enable")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # --- protocol -------------------------------------------------------------------------------
    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """One DevTools command; returns its result (events that arrive meanwhile are dropped)."""
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self._socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") != message_id:
                continue
            if "error" in reply:
                raise BrowserError(f"{method} failed: {reply['error']}")
            return reply.get("result", {})

    def open(self, url: str) -> None:
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"could not open {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"JavaScript failed: {result['exceptionDetails'].get('text')} in {expression!r}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None  # e.g. during a navigation
            if value:
                return value
            time.sleep(0.25)
        page = self.evaluate("location.href + '\\n' + (document.body ? document.body.innerText.slice(0, 2000) : '')")
        raise BrowserError(f"timed out after {timeout:.0f} s waiting for {what or expression}; the page:\n{page}")

    def type_into(self, selector: str, text: str) -> None:
        """Focus an input and type like a user (real input events, so React sees them)."""
        found = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (e) e.focus(); return !!e; }})()")
        if not found:
            raise BrowserError(f"no element {selector!r} on {self.evaluate('location.href')}")
        self.send("Input.insertText", text=text)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
