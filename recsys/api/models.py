"""Request and response bodies of the HTTP API (pydantic), with the examples ``/docs`` shows.

Ids are the shop's raw ids, integers or text as the deployment has them (:mod:`recsys.data.ids`).
The body of ``POST /v1/events`` is documented by :class:`EventsRequest` but checked by
:func:`recsys.events.validation.validate_events` (the one check of both ways in), so its refusals
name each event's index and field the same way the Redis inbox path does.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

Id = Union[int, str]

EVENT_EXAMPLE = {
    "user_id": 1042,
    "item_id": 5003,
    "event_type": "purchase",
    "timestamp": "2026-12-06T21:30:00Z",
    "request_id": "3f6c2a9e0b1d4c7f8e5a6b2c1d0e9f8a",
}


class EventIn(BaseModel):
    """One interaction event."""

    model_config = ConfigDict(json_schema_extra={"examples": [EVENT_EXAMPLE]})

    user_id: Id = Field(description="raw user id (any user: one unknown to the batch data is a new user)")
    item_id: Id = Field(description="raw item id; must be in the served catalogue")
    event_type: str = Field(description="one of the settings' event types (RECSYS_EVENT_TYPES)")
    timestamp: Union[str, float] = Field(
        description="ISO-8601 text (no offset: UTC) or a unix epoch number (seconds, or milliseconds from 1e11); "
        "no older than RECSYS_EVENTS_MAX_AGE_HOURS, no further ahead than RECSYS_EVENTS_MAX_FUTURE_SECONDS"
    )
    request_id: Optional[str] = Field(
        None, description="the recommendation request this event answers (the request_id of GET /v1/recommendations)"
    )


class EventsRequest(BaseModel):
    """A batch of events, accepted whole or refused whole."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"events": [EVENT_EXAMPLE]}]})

    events: list[EventIn] = Field(description="at most RECSYS_EVENTS_MAX_BATCH events")


class EventsAccepted(BaseModel):
    """Every event is in the event log (durable); the live applier applies them to the live state
    milliseconds later, and serving sees them."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"accepted": 1, "first_id": "1765056600000-0", "last_id": "1765056600000-0"}]}
    )

    accepted: int = Field(description="events accepted")
    first_id: str = Field(description="event log entry id of the first event")
    last_id: str = Field(description="event log entry id of the last event")


class Problem(BaseModel):
    """What is wrong with one event (``index`` -1: the batch itself)."""

    index: int
    field: str
    reason: str


class EventsRefused(BaseModel):
    """The batch was refused whole: nothing was applied."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": "1 of 2 event(s) refused; nothing was applied",
                    "problems": [{"index": 1, "field": "event_type", "reason": "'like' is not one of impression, view, "
                                  "click, add_to_cart, purchase, rating (RECSYS_EVENT_TYPES)"}],
                }
            ]
        }
    )

    detail: str
    problems: list[Problem]


class ErrorBody(BaseModel):
    """Why the request failed."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "Triton at 127.0.0.1:8301 is not answering"}]})

    detail: str


class RecommendedItem(BaseModel):
    item_id: Id
    score: float
    attributes: Optional[dict[str, Any]] = Field(
        None, description="display attributes from the online store (title, category, ...); null if it has none"
    )


class Recommendations(BaseModel):
    """A user's recommendations: the four stages (retrieval, filtering, scoring, ordering) on Triton."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "3f6c2a9e0b1d4c7f8e5a6b2c1d0e9f8a",
                    "user_id": "1042",
                    "items": [{"item_id": 5003, "score": 0.93, "attributes": {"title": "Trail shoe", "category": "shoes"}}],
                    "timings_ms": {"retrieval": 2.1, "filtering": 0.2, "scoring": 3.4, "ordering": 0.1},
                }
            ]
        }
    )

    request_id: str = Field(description="name it in the events this answer leads to (attribution); also in X-Request-ID")
    user_id: str
    items: list[RecommendedItem]
    timings_ms: dict[str, float] = Field(description="milliseconds per stage, as Triton measured them")


class SimilarItems(BaseModel):
    """Items like one item (item-to-item neighbours of the served model; unavailable items left out)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"item_id": 5003, "items": [{"item_id": 5010, "score": 0.88, "attributes": {}}]}]}
    )

    item_id: Id
    items: list[RecommendedItem]


class Activity(BaseModel):
    """Live counters of a user or an item: ``{event type: {window: count}}`` over sliding windows."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": 5003, "counts": {"purchase": {"1h": 12, "24h": 40}}, "windows": {"1h": 3600, "24h": 86400}}]
        }
    )

    id: Id
    counts: dict[str, dict[str, int]] = Field(description="event types without events in the windows are left out")
    windows: dict[str, int] = Field(description="each window's length in seconds")


class Health(BaseModel):
    """Liveness (this answer) and whether the API's dependencies answer."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ok", "redis": True, "triton": True, "online_version": "fv-3-7"}]}
    )

    status: str = Field(description="'ok': Redis and Triton answer; 'degraded': one of them does not")
    redis: bool
    triton: bool
    online_version: Optional[str] = None
