"""The recsys page inside Airflow 3: a FastAPI app that ``plugins/recsys_ui.py`` registers.

Airflow mounts it at :data:`URL_PREFIX` and shows ``/recsys/`` in its navigation (an iframe of the
Airflow UI, so the browser sends the ``_token`` cookie of the Airflow login). Every endpoint
requires a valid Airflow token (see :mod:`recsys.ui.auth`).

Endpoints (under ``/recsys``):

- ``GET /``: the page (drift checks and plot, model versions, what Triton serves, the online store,
  buttons that start the DAGs).
- ``GET /api/overview``: the same data as JSON.
- ``GET /drift/plot.svg``: drift score per feature over time, drawn on the server (no CDN, no JS).
- ``GET /drift/reports/{check_id}``: the Evidently HTML report of one drift check.
- ``POST /trigger/{dag_id}``: start one of :data:`~recsys.ui.overview.TRIGGERABLE_DAGS` through
  Airflow's REST API with the caller's token; a browser form gets a redirect back to the page,
  a client that accepts JSON gets ``{"dag_id", "dag_run_id"}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from recsys.settings import get_settings
from recsys.ui import drift, overview
from recsys.ui.auth import UserDep, caller_token, require_same_origin, uses_cookie

log = logging.getLogger(__name__)

URL_PREFIX = "/recsys"
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["age"] = overview.human_age


def create_app() -> FastAPI:
    """The plugin's FastAPI app (mounted by Airflow at :data:`URL_PREFIX`)."""
    app = FastAPI(title="recsys", docs_url=None, redoc_url=None, openapi_url=None)
    # Styles are served by this app itself: the machine may be offline, nothing comes from a CDN.
    # Static files are public (only CSS, no data), like Airflow's own UI assets.
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/", response_class=Response)
    async def page(request: Request, user: UserDep) -> Response:
        sections = await run_in_threadpool(overview.gather, get_settings())
        context = {
            "user": user.get_name(),
            "sections": sections,
            "dags": overview.TRIGGERABLE_DAGS,
            "triggered": request.query_params.get("triggered"),
            "run_id": request.query_params.get("run_id"),
            "error": request.query_params.get("error"),
        }
        return templates.TemplateResponse(request, "overview.html", context)

    @app.get("/api/overview")
    async def overview_json(user: UserDep) -> dict[str, Any]:
        return await run_in_threadpool(overview.gather, get_settings())

    @app.get("/drift/plot.svg")
    async def drift_plot(user: UserDep) -> Response:
        svg = await run_in_threadpool(lambda: drift.plot_svg(drift.history_series(get_settings())))
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    @app.get("/drift/reports/{check_id}")
    async def drift_report(check_id: str, user: UserDep) -> FileResponse:
        path = await run_in_threadpool(drift.report_file, check_id, get_settings())
        if path is None:
            raise HTTPException(status_code=404, detail=f"no report for drift check {check_id!r}")
        return FileResponse(path, media_type="text/html")

    @app.post("/trigger/{dag_id}", dependencies=[Depends(require_same_origin)])
    async def trigger(dag_id: str, request: Request, user: UserDep) -> Response:
        if dag_id not in overview.TRIGGERABLE_DAGS:
            raise HTTPException(status_code=404, detail=f"{dag_id!r} is not one of {sorted(overview.TRIGGERABLE_DAGS)}")
        status_code, body = await trigger_dag(dag_id, caller_token(request))
        wants_json = not uses_cookie(request) or "application/json" in request.headers.get("accept", "")
        if wants_json:
            return JSONResponse(body, status_code=status_code)
        query = {"triggered": dag_id, "run_id": body["dag_run_id"]} if status_code < 300 else {"error": body["detail"]}
        # Relative to /recsys/trigger/<dag_id>: back to the page, inside Airflow's iframe.
        return RedirectResponse("../?" + urlencode(query), status_code=303)

    return app


async def trigger_dag(dag_id: str, token: str) -> tuple[int, dict[str, Any]]:
    """``POST /api/v2/dags/{dag_id}/dagRuns`` on the Airflow REST API as the caller.

    Returns (status, body): 200 with ``{"dag_id", "dag_run_id"}``, or Airflow's refusal
    (401/403/404/409, ...) with ``{"detail": "..."}``.
    """
    import httpx

    url = f"{get_settings().airflow}/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(
                url, json={"logical_date": None, "conf": {}}, headers={"Authorization": f"Bearer {token}"}
            )
    except httpx.HTTPError as exc:
        return 502, {"detail": f"Airflow REST API at {url} is not answering: {exc}"}
    if response.is_success:
        run_id = response.json()["dag_run_id"]
        log.info("recsys UI: started %s run %s", dag_id, run_id)
        return 200, {"dag_id": dag_id, "dag_run_id": run_id}
    try:
        detail = str(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        detail = response.text
    if response.status_code == 404:
        detail = f"DAG {dag_id} is not in Airflow (yet?): {detail}"
    return response.status_code, {"detail": f"Airflow refused to start {dag_id} ({response.status_code}): {detail}"}


app = create_app()
