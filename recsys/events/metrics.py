"""Prometheus pieces the HTTP API and the event worker share (:mod:`recsys.api.metrics`,
:mod:`recsys.events.worker`): the freshness figures as gauges read at scrape time, and the buckets of
the event lag histograms, so both endpoints name and bucket the same things alike."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # pragma: no cover - typing only
    from recsys.online.store import OnlineStore

log = logging.getLogger(__name__)

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: event lags (accept, apply) from a millisecond to ten seconds."""


class FreshnessCollector(Collector):
    """The figures of :func:`recsys.events.freshness.freshness`, read when Prometheus scrapes."""

    def __init__(self, store: Callable[[], "OnlineStore"]):
        self._store = store  # a callable: the app's store exists only once its lifespan started

    def describe(self) -> list[Metric]:
        return []  # figures are read at scrape time only (not when the collector is registered)

    def collect(self) -> Iterator[Metric]:
        from recsys.events.freshness import FIELDS, freshness

        up = GaugeMetricFamily("recsys_freshness_up", "1 if Redis answered this scrape's freshness read, else 0")
        try:
            figures: dict[str, Any] = freshness(self._store())
        except Exception as exc:  # a scrape must answer even when Redis does not
            log.warning("metrics: freshness unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, meaning in FIELDS.items():
            value = figures.get(name)
            if name == "online_version":
                info = GaugeMetricFamily("recsys_freshness_online_version_info", meaning, labels=["version"])
                if value is not None:
                    info.add_metric([str(value)], 1)
                yield info
                continue
            family = GaugeMetricFamily(f"recsys_freshness_{name}", meaning)
            if value is not None:  # unknown (no event yet): no sample rather than a made-up number
                family.add_metric([], float(value))
            yield family
