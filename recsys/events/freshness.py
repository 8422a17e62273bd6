"""How fresh the platform is, in one dict: the figures the Prometheus endpoints and the Airflow view show.

    freshness(store)   # {"events_accepted": 1204, "events_backlog": 12, "online_version_age_seconds": 812.4, ...}

Everything comes from Redis (the event log's totals, the current online version), so every process
(the API, the event worker, the Airflow view) reports the same figures whoever accepted the events.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover - typing only
    from recsys.online.store import OnlineStore

FIELDS = {
    "events_accepted": "events accepted into the event log (all sources, since the log began)",
    "events_refused": "events refused by validation on the Redis inbox path (the API refuses before counting)",
    "events_applied": "accepted events applied to the live layer (visible to serving)",
    "events_not_applied": "accepted events not yet visible to serving (accepted - applied: the live applier's backlog)",
    "events_landed": "accepted events written to the landing folder as parquet parts",
    "events_backlog": "accepted events not yet in the landing folder (accepted - landed)",
    "last_event_age_seconds": "seconds since the newest accepted event (None: none yet)",
    "last_applied_age_seconds": "seconds since the live applier last applied events (None: never)",
    "last_landed_age_seconds": "seconds since the landing consumer last wrote a part (None: never)",
    "online_version": "the current online version",
    "online_version_age_seconds": "seconds since the current online version became current (the batch layer's age)",
}
"""Every figure :func:`freshness` returns, with its meaning (the UI and the metrics' help texts use them)."""


def freshness(store: "OnlineStore", now: Optional[float] = None) -> dict[str, Any]:
    """The figures of :data:`FIELDS` (two round trips)."""
    now = time.time() if now is None else now
    stats = store.event_stats()
    current = store.current()
    accepted, applied, landed = stats.get("accepted", 0), stats.get("applied", 0), stats.get("landed", 0)

    def age(key: str) -> Optional[float]:
        return round(now - stats[key] / 1000, 3) if key in stats else None

    return {
        "events_accepted": accepted,
        "events_refused": stats.get("refused", 0),
        "events_applied": applied,
        "events_not_applied": max(accepted - applied, 0),
        "events_landed": landed,
        "events_backlog": max(accepted - landed, 0),
        "last_event_age_seconds": age("last_accept_ms"),
        "last_applied_age_seconds": age("last_applied_ms"),
        "last_landed_age_seconds": age("last_landed_ms"),
        "online_version": current.version if current else None,
        "online_version_age_seconds": round(current.age_seconds, 3) if current and current.age_seconds is not None else None,
    }
