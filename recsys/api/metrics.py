"""The API's Prometheus metrics (``GET /metrics``), one :class:`ApiMetrics` per app.

Counters and histograms of this process:

- ``recsys_events_accepted_total{source="api"}``, ``recsys_events_refused_total{source="api"}``:
  events accepted / refused by ``POST /v1/events`` (a refused batch counts all its events: none of
  them was applied);
- ``recsys_event_accept_lag_seconds{source="api"}``: from the request's arrival until its events are
  in the event log (durable; the live applier of the event worker makes them visible to serving
  milliseconds later and measures that part itself);
- ``recsys_api_request_duration_seconds{method, route, status}``: per route template (never the
  raw path, whose ids would make one series per user);
- ``recsys_serving_stage_duration_seconds{stage}``: the four stages' times that Triton reports for
  each recommendation request.

And, computed from Redis at scrape time (:class:`recsys.events.metrics.FreshnessCollector` over
:func:`recsys.events.freshness.freshness`, so every process reports the same figures whoever
accepted the events): ``recsys_freshness_<figure>`` for each number of
:data:`recsys.events.freshness.FIELDS`, ``recsys_freshness_online_version_info{version}``, and
``recsys_freshness_up`` (0 when Redis did not answer the scrape).

With several uvicorn workers (``PROMETHEUS_MULTIPROC_DIR`` set, see :mod:`recsys.api.server`) the
counters and histograms of every worker are summed at scrape time (prometheus_client's
multiprocess mode); the freshness figures come from Redis either way.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from recsys.events.metrics import LAG_BUCKETS, FreshnessCollector

if TYPE_CHECKING:  # pragma: no cover - typing only
    from recsys.online.store import OnlineStore

SOURCE = "api"
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ApiMetrics:
    """The app's metric objects, in a registry of their own (several apps may live in one process)."""

    def __init__(self, store: Callable[[], "OnlineStore"]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_accepted = Counter("recsys_events_accepted", "events accepted into the event log", ["source"], registry=r)
        self.events_refused = Counter("recsys_events_refused", "events refused (a refused batch counts all its events)",
                                      ["source"], registry=r)
        self.event_lag = Histogram("recsys_event_accept_lag_seconds",
                                   "request received -> events appended to the event log (durable)",
                                   ["source"], buckets=LAG_BUCKETS, registry=r)
        self.request_duration = Histogram("recsys_api_request_duration_seconds", "HTTP request latency per route",
                                          ["method", "route", "status"], registry=r)
        self.stage_duration = Histogram("recsys_serving_stage_duration_seconds",
                                        "per-stage serving time reported by Triton", ["stage"],
                                        buckets=STAGE_BUCKETS, registry=r)
        self.freshness = FreshnessCollector(store)
        r.register(self.freshness)
        # Series exist from the start (a dashboard shows 0, not "no data", before the first event).
        self.events_accepted.labels(SOURCE)
        self.events_refused.labels(SOURCE)

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage_duration.labels(stage).observe(ms / 1000.0)

    def render(self) -> bytes:
        """The exposition text: this process's metrics (or every worker's), then the freshness figures."""
        if os.environ.get(MULTIPROCESS_ENV):
            from prometheus_client import multiprocess

            scrape = CollectorRegistry()
            multiprocess.MultiProcessCollector(scrape)
            scrape.register(self.freshness)
            return generate_latest(scrape)
        return generate_latest(self.registry)
