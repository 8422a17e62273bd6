"""The recsys HTTP API: events in, recommendations out (FastAPI; docs at ``/docs``, ``/openapi.json``).

    uvicorn --factory recsys.api.app:app_from_env        # what `recsys api serve` and the stack run
    create_app(settings)                                 # an app for explicit settings (tests)

Routes (every ``/v1`` route requires ``Authorization: Bearer <token>``: none 401, a wrong one 403):

- ``POST /v1/events``: a batch of interaction events, checked by
  :func:`recsys.events.validation.validate_events` (the Redis inbox path's check) against the current
  online version's catalogue; accepted whole (202 ``{"accepted", "first_id", "last_id"}``: appended to
  the event log, durable; the live applier (:mod:`recsys.events.live`, run by the event worker)
  applies them to the live state milliseconds later, and serving sees them) or refused whole (422
  ``{"detail", "problems": [{"index", "field", "reason"}]}``, 413 above ``events_max_batch``); 503
  while there is no online version.
- ``GET /v1/recommendations/{user_id}?k=&exclude=``: the four stages on Triton (gRPC) with display
  attributes from the online store and a ``request_id`` (body and ``X-Request-ID``; events name it);
  Triton's bad-request errors 400 with Triton's message; Triton or Redis not answering 503.
- ``GET /v1/items/{item_id}/similar?k=&exclude=``: the served model's item-to-item neighbours; unknown item 404,
  popularity mode (no model) 409.
- ``GET /v1/items/{item_id}/activity``, ``GET /v1/users/{user_id}/activity``: the live counters.
- ``GET /healthz`` (no auth): liveness, and whether Redis and Triton answer.
- ``GET /metrics`` (no auth): Prometheus text (:mod:`recsys.api.metrics`). It holds aggregate figures
  only (no ids, no secrets); the API binds to ``settings.host``, loopback by default, so only this
  machine can scrape it. Bound to another address, anyone who reaches the port can read it.

One online store and one Triton client per process, made at startup (lifespan) and closed at
shutdown. tritonclient's gRPC and redis-py block, so those routes are plain ``def`` routes (FastAPI
runs them in its threadpool); ``POST /v1/events`` reads its body asynchronously, then does its
blocking work in the threadpool too.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from recsys.api import models
from recsys.api.metrics import SOURCE, ApiMetrics
from recsys.data import ids
from recsys.errors import RecsysError
from recsys.online.store import LIVE_WINDOWS, OnlineStoreError
from recsys.serving.client import RecommendClient
from recsys.serving.control import ServingError
from recsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

HEALTH_WAIT_S = 2.0
"""``GET /healthz`` waits this long for each dependency's answer."""
BYTES_PER_EVENT = 2048
"""Body size allowed per event (an event is well under 1 KiB), so an oversized body is refused unread."""

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": models.ErrorBody, "description": "no bearer token (the answer carries WWW-Authenticate: Bearer)"},
    403: {"model": models.ErrorBody, "description": "wrong token"},
}
UNAVAILABLE = {503: {"model": models.ErrorBody, "description": "Redis or Triton does not answer, or no online version yet"}}


class _Client(RecommendClient):
    """RecommendClient whose ``last_timings_ms`` is per thread: the routes share one client across the
    threadpool, and one request must not read another's timings."""

    def __init__(self, settings: Settings):
        self._timings = threading.local()
        super().__init__(settings, "grpc")

    @property
    def last_timings_ms(self) -> dict[str, float]:  # type: ignore[override]
        return getattr(self._timings, "value", {})

    @last_timings_ms.setter
    def last_timings_ms(self, value: dict[str, float]) -> None:
        self._timings.value = value


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    """The API for ``settings`` (default: :func:`~recsys.settings.get_settings`)."""
    s = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from recsys.api.token import ensure_token
        from recsys.events.validation import CatalogueCache
        from recsys.online.redis_store import RedisOnlineStore

        app.state.token = ensure_token(s)
        app.state.store = RedisOnlineStore.from_settings(s)
        app.state.client = _Client(s)
        app.state.catalogue = CatalogueCache(app.state.store, s)
        app.state.health_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="healthz")
        log.info("recsys API: Redis %s, Triton %s (gRPC); docs at /docs", _masked(s.redis), _triton_grpc(s))
        try:
            yield
        finally:
            app.state.health_pool.shutdown(wait=False)
            app.state.client.close()
            app.state.store.close()

    app = FastAPI(
        title="recsys API",
        version="1",
        description="Events in, recommendations out. Send `Authorization: Bearer <token>` on every /v1 route "
        "(the token: RECSYS_API_TOKEN, or `recsys api token --show`).",
        lifespan=lifespan,
    )
    app.state.settings = s
    metrics = ApiMetrics(lambda: app.state.store)
    app.state.metrics = metrics
    app.add_middleware(_RequestTiming, metrics=metrics)
    _add_error_handlers(app, s)

    bearer = HTTPBearer(auto_error=False, description="the API token (RECSYS_API_TOKEN or `recsys api token --show`)")

    def require_token(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if credentials is None:
            raise HTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>' (`recsys api token`)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode(), app.state.token.encode()):
            raise HTTPException(403, "invalid API token")

    authorized = [Depends(require_token)]
    max_k = s.recommend_max_k
    k_query = Query(None, ge=1, le=max_k, description=f"how many items (1 to {max_k}, RECSYS_RECOMMEND_MAX_K; "
                                                      "default: the served model's)")
    exclude_query = Query([], description="item ids to leave out: comma-separated, or the parameter repeated")

    # --- events --------------------------------------------------------------------------------
    @app.post(
        "/v1/events", status_code=202, response_model=models.EventsAccepted, dependencies=authorized, tags=["events"],
        summary="Send interaction events (accepted whole or refused whole)",
        responses={**AUTH_RESPONSES, 413: {"model": models.EventsRefused, "description": "more events than RECSYS_EVENTS_MAX_BATCH"},
                   422: {"model": models.EventsRefused, "description": "the batch is refused: every problem, by event index"},
                   **UNAVAILABLE},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/EventsRequest"}}}}},
    )
    async def post_events(request: Request) -> Any:
        received = time.perf_counter()
        limit = max(1 << 20, s.events_max_batch * BYTES_PER_EVENT)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _refused(413, f"the body ({declared} bytes) is larger than {limit} bytes", -1, "body",
                            f"at most {s.events_max_batch} events (RECSYS_EVENTS_MAX_BATCH) of up to {BYTES_PER_EVENT} bytes each")
        body = await request.body()
        if len(body) > limit:
            return _refused(413, f"the body is larger than {limit} bytes", -1, "body", "too large")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _refused(422, "the body is not valid JSON", -1, "body", f"not valid JSON: {exc}")
        if not isinstance(payload, dict) or "events" not in payload:
            return _refused(422, "the body must be a JSON object with a list of events", -1, "events",
                            'missing: send {"events": [{"user_id", "item_id", "event_type", "timestamp"}, ...]}')
        unknown = sorted(str(key) for key in payload if key != "events")
        if unknown:
            return _refused(422, "the body holds only events", -1, unknown[0], "unknown field (the body holds only 'events')")
        return await run_in_threadpool(_accept, app, payload["events"], received)

    # --- recommendations ---------------------------------------------------------------------------
    @app.get(
        "/v1/recommendations/{user_id}", response_model=models.Recommendations, dependencies=authorized,
        tags=["recommendations"], summary="A user's recommendations (four stages on Triton)",
        responses={**AUTH_RESPONSES, 400: {"model": models.ErrorBody, "description": "Triton refused the request (its message)"},
                   **UNAVAILABLE},
    )
    def recommendations(
        user_id: str, response: Response, k: Optional[int] = k_query, exclude: list[str] = exclude_query,
    ) -> models.Recommendations:
        request_id = uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        client: _Client = app.state.client
        began = time.perf_counter()
        pairs = client.recommend(user_id, k, _exclusions(client, exclude), timings=True)
        timings = dict(client.last_timings_ms)
        items = _with_attributes(app, pairs)
        metrics.observe_stages(timings)
        log.info("recommendations request_id=%s user=%s k=%s items=%d in %.1f ms (stages %s)", request_id, user_id, k,
                 len(items), 1000 * (time.perf_counter() - began), {st: round(ms, 2) for st, ms in timings.items()})
        return models.Recommendations(request_id=request_id, user_id=user_id, items=items, timings_ms=timings)

    @app.get(
        "/v1/items/{item_id}/similar", response_model=models.SimilarItems, dependencies=authorized,
        tags=["recommendations"], summary="Items similar to an item (the served model's neighbours)",
        responses={**AUTH_RESPONSES, 404: {"model": models.ErrorBody, "description": "the item is not in the catalogue"},
                   409: {"model": models.ErrorBody, "description": "popularity mode: no model serves, so no neighbours"},
                   **UNAVAILABLE},
    )
    def similar(item_id: str, k: Optional[int] = k_query, exclude: list[str] = exclude_query) -> models.SimilarItems:
        item = _known_item(app, item_id)
        client: _Client = app.state.client
        try:
            pairs = client.similar(item, k, _exclusions(client, exclude))
        except ServingError as exc:
            text = str(exc)
            if "popularity" in text:
                raise HTTPException(409, f"no similar items: {_triton_message(exc)}") from None
            if "bad request" in text and ("unknown" in text or "not in" in text):
                raise HTTPException(404, _triton_message(exc)) from None
            raise
        return models.SimilarItems(item_id=item, items=_with_attributes(app, pairs))

    # --- live counters ------------------------------------------------------------------------------
    event_type_query = Query([], description="event types to count (default: every accepted type)")

    @app.get(
        "/v1/items/{item_id}/activity", response_model=models.Activity, dependencies=authorized, tags=["activity"],
        summary="Live counters of an item (e.g. purchases in the last hour)",
        responses={**AUTH_RESPONSES, 404: {"model": models.ErrorBody, "description": "the item is not in the catalogue"},
                   **UNAVAILABLE},
    )
    def item_activity(item_id: str, event_type: list[str] = event_type_query) -> models.Activity:
        item = _known_item(app, item_id)
        counts = app.state.store.live_counts("items", [item], _event_types(s, event_type))[0]
        return models.Activity(id=item, counts=counts, windows=dict(LIVE_WINDOWS))

    @app.get(
        "/v1/users/{user_id}/activity", response_model=models.Activity, dependencies=authorized, tags=["activity"],
        summary="Live counters of a user", responses={**AUTH_RESPONSES, **UNAVAILABLE},
    )
    def user_activity(user_id: str, event_type: list[str] = event_type_query) -> models.Activity:
        user = ids.parse(user_id, app.state.catalogue.rules().id_kinds.user_id, "user_id")
        counts = app.state.store.live_counts("users", [user], _event_types(s, event_type))[0]
        return models.Activity(id=user, counts=counts, windows=dict(LIVE_WINDOWS))

    # --- operations (no auth) -------------------------------------------------------------------------
    @app.get("/healthz", response_model=models.Health, tags=["operations"], summary="Liveness and dependencies (no auth)")
    def healthz() -> models.Health:
        """Always 200 while the process serves (liveness); the body says whether Redis and Triton answer."""
        from recsys.serving.control import server_ready

        # Both probes at once, each given HEALTH_WAIT_S: a hung dependency makes the answer "degraded",
        # never a slow liveness probe.
        pool = app.state.health_pool
        current, triton = pool.submit(app.state.store.current), pool.submit(server_ready, s)
        version, redis_ok = None, True
        try:
            info = current.result(timeout=HEALTH_WAIT_S)
            version = info.version if info else None
        except Exception as exc:  # any failure (or no answer in time) means "Redis does not answer"
            log.warning("healthz: Redis: %s", exc or "no answer in time")
            redis_ok = False
        try:
            triton_ok = bool(triton.result(timeout=HEALTH_WAIT_S))
        except Exception:
            triton_ok = False
        return models.Health(status="ok" if redis_ok and triton_ok else "degraded", redis=redis_ok,
                             triton=triton_ok, online_version=version)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (no auth; loopback by default)",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    def prometheus_metrics() -> Response:
        """Prometheus text format. No auth: it holds aggregate figures only (no ids, no secrets), and the
        API binds to ``settings.host``, loopback by default, so only this machine can scrape it; bound to
        another address, anyone who reaches the port can."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    _document_event_body(app)
    return app


def app_from_env() -> FastAPI:
    """The app for the process's settings (environment), with log lines on stderr: uvicorn's factory."""
    logger = logging.getLogger("recsys")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return create_app(get_settings())


# --- the work behind the routes ------------------------------------------------------------------------
def _accept(app: FastAPI, raw: Any, received: float) -> Any:
    from recsys.events.validation import EventsRefused, validate_events

    metrics: ApiMetrics = app.state.metrics
    rules = app.state.catalogue.rules()  # NoOnlineVersionError: 503 (no catalogue to check against)
    try:
        batch = validate_events(raw, rules)
    except EventsRefused as exc:
        total = len(raw) if isinstance(raw, list) else 0
        metrics.events_refused.labels(SOURCE).inc(total)
        status = 413 if isinstance(raw, list) and len(raw) > rules.max_batch else 422
        log.info("events: refused a batch of %d (%d problem(s))", total, len(exc.problems))
        body = models.EventsRefused(detail=str(exc).splitlines()[0].rstrip(":"),
                                    problems=[models.Problem(**p.to_dict()) for p in exc.problems])
        return JSONResponse(body.model_dump(), status_code=status)
    result = app.state.store.accept_events(batch)
    metrics.event_lag.labels(SOURCE).observe(time.perf_counter() - received)
    metrics.events_accepted.labels(SOURCE).inc(result.accepted)
    log.debug("events: accepted %d (%s .. %s)", result.accepted, result.first_id, result.last_id)
    return JSONResponse(models.EventsAccepted(accepted=result.accepted, first_id=result.first_id,
                                              last_id=result.last_id).model_dump(), status_code=202)


def _refused(status: int, detail: str, index: int, field: str, reason: str) -> JSONResponse:
    body = models.EventsRefused(detail=detail, problems=[models.Problem(index=index, field=field, reason=reason)])
    return JSONResponse(body.model_dump(), status_code=status)


def _with_attributes(app: FastAPI, pairs: list[tuple[Any, float]]) -> list[models.RecommendedItem]:
    attributes = app.state.store.display([item for item, _ in pairs]) if pairs else []
    return [models.RecommendedItem(item_id=item, score=score, attributes=attrs)
            for (item, score), attrs in zip(pairs, attributes)]


def _exclusions(client: RecommendClient, exclude: list[str]) -> Optional[dict[str, Any]]:
    """The request context leaving out ``exclude`` (ids parsed into the served item id kind), or None."""
    excluded = [part.strip() for value in exclude for part in value.split(",") if part.strip()]
    if not excluded:
        return None
    kind = client.id_kinds.item_id  # the served deployment's kind (asked of Triton once)
    return {"exclude_items": [ids.parse(item, kind, "exclude") for item in excluded]}


def _known_item(app: FastAPI, item_id: str) -> ids.IdValue:
    """The raw item id in the catalogue's kind; 404 if the current online version does not hold it."""
    import numpy as np

    rules = app.state.catalogue.rules()
    item = ids.parse(item_id, rules.id_kinds.item_id, "item_id")
    if rules.known_items is not None and not bool(np.asarray(rules.known_items(ids.as_array([item], rules.id_kinds.item_id)))[0]):
        raise HTTPException(404, f"item {ids.show(item)} is not in the served catalogue ({rules.catalogue})")
    return item


def _event_types(settings: Settings, asked: list[str]) -> tuple[str, ...]:
    known = settings.event_type_list
    wanted = tuple(dict.fromkeys(part.strip() for value in asked for part in value.split(",") if part.strip()))
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise HTTPException(422, f"event type {unknown[0]!r} is not one of {', '.join(known)} (RECSYS_EVENT_TYPES)")
    return wanted or known


# --- errors --------------------------------------------------------------------------------------------
def _triton_message(exc: ServingError) -> str:
    """Triton's own message (tritonclient's exception, kept as the ServingError's context)."""
    cause = exc.__context__
    message = getattr(cause, "message", None)
    return (message() if callable(message) else None) or str(exc)


def _triton_grpc(settings: Settings) -> str:
    """Every Triton replica's gRPC ``host:port``, comma-separated (requests go to each in turn)."""
    return ",".join(grpc for _, grpc in settings.triton_endpoints)


def _triton_status(exc: ServingError) -> int:
    cause = exc.__context__
    status = str(cause.status()) if hasattr(cause, "status") and callable(cause.status) else ""
    text = str(exc)
    if "bad request" in text:
        return 400
    if any(code in status for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")) or "failed to connect" in text \
            or "unknown model" in text or "is not ready" in text or "not found" in text:
        return 503
    return 502  # Triton answered, with an error that is not the request's fault


def _add_error_handlers(app: FastAPI, settings: Settings) -> None:
    import redis

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        status = _triton_status(exc)
        message = _triton_message(exc)
        if status == 503:
            message = f"Triton at {_triton_grpc(settings)} (gRPC) is not answering: {message}"
        elif status == 502:
            message = f"Triton could not answer: {message}"
        log.warning("%s %s: %d %s", request.method, request.url.path, status, message)
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(redis.exceptions.RedisError)
    async def redis_error(request: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        status = 503 if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)) else 502
        log.warning("%s %s: Redis: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": f"Redis at {_masked(settings.redis)}: {type(exc).__name__}: {exc}"}, status_code=status)

    @app.exception_handler(OnlineStoreError)
    async def store_error(request: Request, exc: OnlineStoreError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(ids.IdError)
    async def id_error(request: Request, exc: ids.IdError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RecsysError)
    async def recsys_error(request: Request, exc: RecsysError) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=500)


def _document_event_body(app: FastAPI) -> None:
    """List :class:`models.EventsRequest` in the OpenAPI components: ``POST /v1/events`` reads its body
    itself (so that :func:`validate_events`, not pydantic, decides and words every refusal)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = FastAPI.openapi(app)
        body = models.EventsRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(body.pop("$defs", {}))
        components["EventsRequest"] = body
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _masked(url: str) -> str:
    from recsys.settings import masked_url

    return masked_url(url)


class _RequestTiming:
    """ASGI middleware: ``recsys_api_request_duration_seconds`` by method, route template and status."""

    def __init__(self, app: Any, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"  # the template: bounded label values
            self.metrics.request_duration.labels(scope["method"], route, str(status[0])).observe(time.perf_counter() - began)
