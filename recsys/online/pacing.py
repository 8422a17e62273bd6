"""Pacing a refresh against readers' latency: the one owner of how fast a refresh writes.

Why. A refresh writes into the Redis that serving reads. Redis runs commands one at a time, so a read
that arrives while a write unit is being executed waits behind it; on a small machine the refreshing
process, redis-server and the readers also share the cores. Written at full speed, a full refresh
took readers' p99 to 6.8x its idle value (bench/online_store.py). The budget
(``settings.online_refresh_read_budget``, default 2.0) says how much worse readers' p99 may get
while a refresh runs: at most ``budget`` times its idle value.

How. A *probe* is one read of the kind serving does (the backend supplies it: the Redis backend's
users script for one user). The refresh writes in *units* (one round trip of up to ``max_unit``
entities) and the pacer times two probes per unit:

* one sent while the unit is in flight (the backend calls :meth:`RefreshPacer.sample` once the unit
  is sent): what a reader arriving during the refresh's writes waits;
* one right after the unit (the pacer takes it itself): what a reader waits when the refresh is not
  writing. These, seeded by :data:`IDLE_PROBES` probes before the refresh writes anything, are the
  *idle* latencies (the newest :data:`IDLE_PROBES` of them): a machine that gets busier for other
  reasons during a long refresh raises them too, so the pacer answers for its own writes only.

The *limit* is ``budget`` x the idle p99. After each unit the refresh pauses, so that it spends the
share ``duty`` of its time writing. A reader arrives during a unit with probability ``duty`` and then
waits like the probes sent during units; otherwise like an idle read. So the share of readers over
the limit is estimated as ``duty x (probes during units over the limit / probes during units) +
(1 - duty) x (idle probes over the limit / idle probes)``; readers' p99 stays within the limit while
that share is at most 1%.

Control (AIMD along one ladder of speeds, as TCP's congestion control): an estimate above 1% is
congestion, and the pacer slows down at once (multiplicative decrease): it halves the unit, down to
:data:`MIN_UNIT` entities (short units keep each stretch Redis spends on the refresh short), and then
halves the duty, down to :data:`MIN_DUTY` (so a refresh always ends). A window of :data:`WINDOW`
probes with the estimate at most half of that speeds it up again (additive increase): first the duty
by :data:`DUTY_STEP` up to 1, then the unit by an eighth of the largest unit up to the largest
(``settings.online_batch_size``). Small units at a high duty come first because, for the rows they
write, they cost readers the least (a unit's fixed cost is one round trip and two probes).

A budget of 0 turns pacing off: no probes, units of the largest size, no pauses. The pacer knows no
Redis: the probe, the clock and the sleep are given to it (the tests give a fake clock).
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable, Iterator, Optional

IDLE_PROBES = 200
"""Probes timed before the refresh writes anything (~20-60 ms in all); the idle latencies are the newest
this many of those and of the probes taken right after each unit."""
WINDOW = 50
"""Probes during units without congestion before the pacer speeds up (a new window starts at every
change of speed)."""
MIN_EVIDENCE = 20
"""The share of probes over the limit is counted over at least this many probes, so one slow probe among
the first few of a window is 1/20 of them, not all of them (it still means congestion at full duty)."""
TARGET_SHARE = 0.01
"""Readers over the limit the pacer allows: 1% (the limit is on the p99)."""
MIN_UNIT = 50
"""The smallest unit (entities per round trip): below it a unit's round trip and probes cost more than its rows."""
MIN_DUTY = 0.02
"""The smallest share of time spent writing, so a refresh always ends."""
DUTY_STEP = 0.1
"""Additive increase of the duty after a window without congestion."""


def quantile(values: "list[float] | deque[float]", q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank; 0.0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class RefreshPacer:
    """Paces one refresh's write units against a latency budget (see the module docstring).

    ``probe``: one read like serving's (its reply is ignored; the pacer times it). ``budget`` <= 0, or
    no probe: pacing off. ``max_unit``: the largest unit (and the unit when pacing is off).

    Use: :meth:`measure_idle` once, then ``for start, stop in pacer.units(n):`` write entities
    ``start:stop`` in one round trip, calling :meth:`sample` while it is in flight. The generator times
    each unit, probes, decides the speed and pauses before yielding the next unit. :meth:`report` says
    what it did.
    """

    def __init__(
        self,
        budget: float,
        max_unit: int,
        probe: Optional[Callable[[], Any]] = None,
        *,
        min_unit: int = MIN_UNIT,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_unit < 1:
            raise ValueError(f"the largest unit must be >= 1 entity, got {max_unit}")
        self.budget = float(budget)
        self.enabled = self.budget > 0 and probe is not None
        self.max_unit = max_unit
        self.min_unit = max(1, min(min_unit, max_unit))
        self.unit = max_unit
        self.duty = 1.0
        self._probe = probe
        self._clock = clock
        self._sleep = sleep
        self.idle: deque[float] = deque(maxlen=IDLE_PROBES)
        self.first_idle_p99 = 0.0
        self.window: list[float] = []  # probes during units since the last change of speed
        self.probes: list[float] = []  # every probe during a unit
        self.rows = 0
        self.units_written = 0
        self.work_seconds = 0.0
        self.paused_seconds = 0.0
        self.slowdowns = 0
        self.speedups = 0
        self.smallest_unit = max_unit
        self.lowest_duty = 1.0

    # --- measuring ----------------------------------------------------------------------------
    def _time_probe(self) -> float:
        assert self._probe is not None
        began = self._clock()
        self._probe()
        return self._clock() - began

    def measure_idle(self, n: int = IDLE_PROBES) -> None:
        """Time ``n`` probes before writing: the first idle latencies."""
        if self.enabled:
            for _ in range(n):
                self.record_idle(self._time_probe())
            self.first_idle_p99 = quantile(self.idle, 0.99)

    def record_idle(self, seconds: float) -> None:
        """Count a probe taken while the refresh was not writing."""
        self.idle.append(seconds)

    def sample(self) -> None:
        """Time one probe now (call it while a unit is in flight) and count it; a no-op when pacing is off."""
        if self.enabled:
            self.record_probe(self._time_probe())

    def record_probe(self, seconds: float) -> None:
        """Count a probe taken while a unit was in flight (what :meth:`sample` does with the time it measured)."""
        self.probes.append(seconds)
        self.window.append(seconds)

    @property
    def limit(self) -> float:
        """Seconds: the budget x the p99 of the idle latencies (infinite before any were measured)."""
        return self.budget * quantile(self.idle, 0.99) if self.idle else math.inf

    def share_over(self) -> float:
        """Estimated share of readers over the limit at the current duty (see the module docstring)."""
        limit = self.limit
        during = sum(x > limit for x in self.window) / max(len(self.window), MIN_EVIDENCE)
        idle = sum(x > limit for x in self.idle) / len(self.idle) if self.idle else 0.0
        return self.duty * during + (1.0 - self.duty) * idle

    # --- deciding -----------------------------------------------------------------------------
    def after_unit(self, rows: int, work_seconds: float) -> float:
        """Account one unit (``rows`` written in ``work_seconds``) and adapt the speed: congestion
        slows down at once, a window without it speeds up. Returns the pause before the next unit."""
        self.rows += rows
        self.units_written += 1
        self.work_seconds += work_seconds
        if not self.enabled:
            return 0.0
        share = self.share_over()
        if share > TARGET_SHARE and any(x > self.limit for x in self.window):
            self._slow_down()
        elif len(self.window) >= WINDOW and share <= TARGET_SHARE / 2:
            self._speed_up()
        return work_seconds * (1.0 / self.duty - 1.0)

    def _slow_down(self) -> None:
        if self.unit > self.min_unit:
            self.unit = max(self.min_unit, self.unit // 2)
        else:
            self.duty = max(MIN_DUTY, self.duty / 2)
        self.slowdowns += 1
        self.smallest_unit = min(self.smallest_unit, self.unit)
        self.lowest_duty = min(self.lowest_duty, self.duty)
        self.window = []

    def _speed_up(self) -> None:
        if self.duty < 1.0:
            self.duty = min(1.0, round(self.duty + DUTY_STEP, 6))
        elif self.unit < self.max_unit:
            self.unit = min(self.max_unit, self.unit + max(1, self.max_unit // 8))
        else:
            self.window = []
            return  # already at full speed
        self.speedups += 1
        self.window = []

    # --- the loop -----------------------------------------------------------------------------
    def units(self, total: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of each unit of ``total`` entities. Between two yields the caller writes a
        unit; the pacer then times it, takes an idle probe, decides and pauses (the probe's time is
        part of the pause)."""
        start = 0
        while start < total:
            stop = min(total, start + self.unit)
            began = self._clock()
            yield start, stop
            ended = self._clock()
            pause = self.after_unit(stop - start, ended - began)
            if self.enabled and stop < total:
                self.record_idle(self._time_probe())
                rest = pause - (self._clock() - ended)
                if rest > 0:
                    self._sleep(rest)
                    self.paused_seconds += rest
            start = stop

    @property
    def state(self) -> str:
        """Speed now, for progress lines: ``unit 200, duty 0.50, paused 1.2s``."""
        if not self.enabled:
            return f"unit {self.unit}, not paced"
        return f"unit {self.unit}, duty {self.duty:.2f}, paused {self.paused_seconds:.1f}s"

    def summary(self) -> str:
        """One line for the refresh's log: the limit, the probes and how much pacing slowed the refresh."""
        if not self.enabled:
            return "not paced"
        return (
            f"paced to {self.budget:g}x the idle probe p99 ({1000 * quantile(self.idle, 0.99):.2f} ms): probes during "
            f"writes p99 {1000 * quantile(self.probes, 0.99):.2f} ms; paused {self.paused_seconds:.1f}s; "
            f"ended at unit {self.unit} of {self.max_unit}, duty {self.duty:.2f} (slowest: unit {self.smallest_unit}, "
            f"duty {self.lowest_duty:.2f})"
        )

    def report(self) -> dict[str, Any]:
        """What the pacing did (JSON-able): budget, limit, probes, pauses, final and slowest speed."""
        ms = lambda seconds: round(1000 * seconds, 3)  # noqa: E731
        out: dict[str, Any] = {
            "budget": self.budget,
            "enabled": self.enabled,
            "units": self.units_written,
            "unit": self.unit,
            "max_unit": self.max_unit,
            "write_seconds": round(self.work_seconds, 3),
            "paused_seconds": round(self.paused_seconds, 3),
        }
        if self.enabled:
            limit = self.limit
            out.update(
                duty=round(self.duty, 3),
                smallest_unit=self.smallest_unit,
                lowest_duty=round(self.lowest_duty, 3),
                slowdowns=self.slowdowns,
                speedups=self.speedups,
                first_idle_probe_p99_ms=ms(self.first_idle_p99),
                idle_probe_p99_ms=ms(quantile(self.idle, 0.99)),
                limit_ms=ms(limit) if math.isfinite(limit) else None,
                probes=len(self.probes),
                probe_p50_ms=ms(quantile(self.probes, 0.5)),
                probe_p99_ms=ms(quantile(self.probes, 0.99)),
                probes_over_limit=sum(x > limit for x in self.probes),
            )
        return out
