"""A small client for Airflow 3's REST API (``/api/v2``), enough to drive DAGs from the CLI and tests.

Authentication: ``POST /auth/token`` with user and password returns a JWT, sent as a bearer token.
The token is fetched lazily and fetched again once when the server answers 401 (expired).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional
from urllib.parse import quote

import httpx

from recsys.errors import ServiceError
from recsys.settings import Settings

FINISHED_STATES = {"success", "failed"}


class AirflowClient:
    """``AirflowClient("http://127.0.0.1:8280", "admin", "secret")``."""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self._token: Optional[str] = None
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> "AirflowClient":
        """A client for the Airflow the settings point at (embedded or external)."""
        from recsys.stack.airflow import airflow_password

        return cls(settings.airflow, settings.airflow_user, airflow_password(settings))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "AirflowClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------
    def token(self) -> str:
        """A fresh access token (``POST /auth/token``)."""
        try:
            response = self._http.post("/auth/token", json={"username": self.username, "password": self._password})
        except httpx.HTTPError as exc:
            raise ServiceError(f"Airflow at {self.base_url} is not answering: {exc}") from None
        if response.status_code in (401, 403):
            raise ServiceError(f"Airflow at {self.base_url} refused user {self.username!r}: wrong password?")
        _raise_for_status(response, "POST /auth/token")
        self._token = response.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An authenticated request; raises :class:`ServiceError` on an error status (except 404)."""
        for attempt in range(2):
            headers = {"Authorization": f"Bearer {self._token or self.token()}"}
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.HTTPError as exc:
                raise ServiceError(f"Airflow at {self.base_url}: {method} {path} failed: {exc}") from None
            if response.status_code == 401 and attempt == 0:
                self._token = None  # expired: fetch a new one and retry once
                continue
            if response.status_code != 404:
                _raise_for_status(response, f"{method} {path}")
            return response
        raise AssertionError("unreachable")

    # --- DAGs and runs ----------------------------------------------------------------------
    def dags(self) -> list[dict[str, Any]]:
        """All DAGs the dag-processor has parsed (``GET /api/v2/dags``)."""
        response = self.request("GET", "/api/v2/dags", params={"limit": 1000})
        return response.json()["dags"]

    def dag(self, dag_id: str) -> Optional[dict[str, Any]]:
        response = self.request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}")
        return None if response.status_code == 404 else response.json()

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0, poll: float = 2.0) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id``; return the DAG."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.dag(dag_id)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"DAG {dag_id!r} did not appear in Airflow within {timeout:.0f} s; "
                    "look for import errors in the dag-processor log (`recsys stack status`) "
                    "or GET /api/v2/importErrors"
                )
            time.sleep(poll)

    def import_errors(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v2/importErrors").json()["import_errors"]

    def unpause(self, dag_id: str) -> None:
        response = self.request("PATCH", f"/api/v2/dags/{quote(dag_id, safe='')}", json={"is_paused": False})
        if response.status_code == 404:
            raise ServiceError(f"no DAG {dag_id!r} in Airflow at {self.base_url}")

    def trigger(self, dag_id: str, conf: Optional[dict[str, Any]] = None, logical_date: Optional[str] = None) -> str:
        """Create a DAG run (``POST /api/v2/dags/{id}/dagRuns``); return its run id.

        ``logical_date``: ISO 8601 string, or None for a run without one (Airflow 3 allows that).
        """
        body = {"logical_date": logical_date, "conf": conf or {}}
        response = self.request("POST", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns", json=body)
        if response.status_code == 404:
            raise ServiceError(f"no DAG {dag_id!r} in Airflow at {self.base_url}")
        return response.json()["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        response = self.request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}")
        if response.status_code == 404:
            raise ServiceError(f"no run {run_id!r} of DAG {dag_id!r}")
        return response.json()

    def dag_runs(self, dag_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The DAG's runs, oldest first (run_type ``scheduled``, ``manual``, ``asset_triggered``, ...)."""
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
        return self.request("GET", path, params={"order_by": "id", "limit": limit}).json()["dag_runs"]

    def upstream_asset_events(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The Asset events that started an ``asset_triggered`` run (name, uri, extra, source_dag_id, source_run_id)."""
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/upstreamAssetEvents"
        return self._asset_events(path)

    def asset_events(self, **filters: Any) -> list[dict[str, Any]]:
        """Asset events, oldest first (``source_dag_id=...``, ``name_pattern=...``: the API's filters)."""
        return self._asset_events("/api/v2/assets/events", {"order_by": "timestamp", "limit": 1000, **filters})

    def _asset_events(self, path: str, params: Optional[dict[str, Any]] = None, timeout: float = 120) -> list[dict[str, Any]]:
        """Airflow 3.3 answers 500 for Asset events while a run they created is still queued (its response
        model requires every created run's ``start_date``, None until the run starts): asked again until
        those runs started, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.request("GET", path, params=params).json()["asset_events"]
            except ServiceError as exc:
                if "answered 500" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def health(self) -> dict[str, Any]:
        """``GET /api/v2/monitor/health``: each component's status and latest heartbeat."""
        return self.request("GET", "/api/v2/monitor/health").json()

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's task instances (task_id, state, try_number, ...)."""
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        return self.request("GET", path, params={"limit": 1000}).json()["task_instances"]

    def wait(
        self,
        dag_id: str,
        run_id: str,
        timeout: float = 600.0,
        poll: float = 3.0,
        progress: Optional[Callable[[str], None]] = print,
    ) -> str:
        """Wait until the run finishes; return its final state (``success`` or ``failed``).

        Prints a line whenever the task states change, so a long run shows where it is.
        Raises :class:`ServiceError` on timeout.
        """
        deadline = time.monotonic() + timeout
        last_line = ""
        while True:
            state = self.dag_run(dag_id, run_id)["state"]
            tasks = self.task_instances(dag_id, run_id)
            line = f"{dag_id} {run_id}: {state}; " + ", ".join(
                f"{t['task_id']}={t['state'] or 'none'}" for t in sorted(tasks, key=lambda t: t["task_id"])
            )
            if progress and line != last_line:
                progress(line)
                last_line = line
            if state in FINISHED_STATES:
                return state
            if time.monotonic() > deadline:
                raise ServiceError(f"run {run_id} of {dag_id} still {state} after {timeout:.0f} s ({line})")
            time.sleep(poll)

    # --- pools ------------------------------------------------------------------------------
    def ensure_pool(self, name: str, slots: int, description: str = "") -> None:
        """Create the pool, or set its slot count if it exists."""
        existing = self.pool(name)
        if existing is None:
            self.request("POST", "/api/v2/pools", json={"name": name, "slots": slots, "description": description})
        elif existing["slots"] != slots:
            body = {"name": name, "slots": slots, "include_deferred": existing.get("include_deferred", False)}
            self.request("PATCH", f"/api/v2/pools/{quote(name, safe='')}", params={"update_mask": "slots"}, json=body)

    def pool(self, name: str) -> Optional[dict[str, Any]]:
        response = self.request("GET", f"/api/v2/pools/{quote(name, safe='')}")
        return None if response.status_code == 404 else response.json()


def _raise_for_status(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    detail = response.text[:500]
    raise ServiceError(f"Airflow {what} answered {response.status_code}: {detail}")
