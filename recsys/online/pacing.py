"""Pacing a refresh against readers' latency: the one owner of how fast a refresh writes.

Why. A refresh writes into the Redis that serving reads. Redis runs commands one at a time, so a read
that arrives while a write unit is being executed waits behind it; on a small machine the refreshing
process, redis-server and the readers also share the cores. Written at full speed, refreshes took
readers' p99 to ~4x its idle value (full) and ~16x (incremental: its copy scripts run whole); paced
with the default budget, ~1.3x and ~1.1x, at 15-28% of the unpaced rows/s (bench/online_store.py,
bench/README.md, 2026-12-07). The budget
(``settings.online_refresh_read_budget``, default 2.0) says how much worse readers' p99 may get
while a refresh runs: at most ``budget`` times its idle value.

The criterion. A reader's latency during a refresh is its idle latency plus the wait the refresh adds
(behind a unit in Redis, or for a core). Its p99 stays within ``budget`` x the idle p99 if at most 1%
of readers are made to wait more than about ``(budget - 1)`` x their idle p99 extra. The pacer measures
probes, not the readers, so its *limit* is ``budget`` x the p90 of the idle probes (:data:`IDLE_QUANTILE`).
Not their p99: probes come every few milliseconds from a mostly idle process, and on a busy machine
their tail (wake-ups) is far heavier than a busy reader's; on the benchmark's machine the idle probes'
p99 was 3-10x the reader's p99, their p90 near it, and a limit on their p99 let the reader's p99 grow
~6x. Not their median either: that is a sound lower bound of a reader's idle p99, but it throttled
refreshes to ~2% of their speed with the reader at ~0.5x its idle p99 (benchmark runs while the limit
was chosen).

How. A *probe* is one read of the kind serving does (the backend supplies it: the Redis backend's
users script for one user). A :class:`ForkedProber` times one every ~:data:`PROBE_INTERVAL` seconds in
a child process that sleeps in between, as a serving process waits for requests: its latencies
include what the refresh costs readers in Redis and on the CPU (the refreshing process itself would
miss the latter, and add its own scheduling delay, being the busy one). The refresh writes in *units*
(one round trip of up to ``max_unit`` entities) and tells the prober when a unit is in flight; each
probe comes back tagged *during* a unit or not. Probes not during a unit, the first
:data:`IDLE_PROBES` of them before the refresh writes anything, are the *idle* latencies (the newest
:data:`IDLE_WINDOW`; a machine that gets busier for other reasons during a long refresh raises them
too, so the pacer answers for its own writes only). Probes are spread evenly over time, as readers
are, and one that waited stands for the readers that arrived meanwhile too: it counts once more per
probe interval of its wait, each time that much shorter (HdrHistogram's correction of coordinated
omission; otherwise a 20 ms stall would count as one slow read, not ten).

Since the pacer last changed speed, the *surplus* is the number of readers the refresh pushed over the
limit: probes during units over it, less what the idle share over it would give (readers a busy
machine pushes over it anyway are not the refresh's); its noise is the square root of the latter.

Control (AIMD along one ladder of speeds, as TCP's congestion control). A paced refresh starts at the
smallest unit and full duty. A surplus above 1% of the window's readers by more than twice its noise,
over a window of at least :data:`MIN_EVIDENCE` probes with at least two of them over the limit (one
slow probe on a busy machine is noise), is congestion, and the pacer slows down (multiplicative
decrease): it halves the unit, down to :data:`MIN_UNIT`
entities (short units keep each stretch Redis spends on the refresh short), and then halves the
*duty*, the share of time spent writing (after each unit it pauses ``work x (1/duty - 1)``), down to
:data:`MIN_DUTY` (so a refresh always ends). :data:`WINDOW` probes with the surplus at most half of
that speed it up again (additive increase): first the duty by :data:`DUTY_STEP` up to 1, then the unit by
an eighth of the largest unit up to the largest (``settings.online_batch_size``). Small units at a
high duty come first because, for the rows they write, they cost readers the least.

A budget of 0 turns pacing off: no prober, units of the largest size, no pauses. :class:`RefreshPacer`
knows no Redis nor processes: the probes' source, the clock and the sleep are given to it (the tests
give fakes).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections import deque
from typing import Any, Callable, Iterator, Optional, Protocol

log = logging.getLogger(__name__)

PROBE_INTERVAL = 0.004
"""Seconds between two probes of the prober (on average; each gap is drawn from 0.5x-1.5x of it): 250
light reads a second, a few percent of a core."""
IDLE_PROBES = 100
"""Probes before the refresh writes anything (~0.4 s): the first idle latencies."""
IDLE_WINDOW = 1000
"""The idle latencies are the newest this many probes not taken during a unit."""
IDLE_QUANTILE = 0.9
"""The limit is the budget x this quantile of the idle latencies (see the module docstring)."""
IDLE_REFRESH = 25
"""The limit and the idle share over it are computed again after this many new idle latencies."""
WINDOW = 200
"""Probes (the readers they stand for) without congestion before the pacer speeds up (~0.8 s; a new
window starts at every change of speed)."""
MIN_EVIDENCE = 50
"""Probes (the readers they stand for) of a window before the pacer may slow down (~0.2 s): one slowdown
per window, so a burst of noise costs one halving, not a cascade of them."""
MIN_OVER = 2
"""Probes during units over the limit (not counting the readers they stand for) before the pacer may
call it congestion."""
MAX_STAND_FOR = 1000
"""The most readers one probe stands for (a probe of several seconds: a stall, not a statistic)."""
TARGET_SHARE = 0.01
"""Readers the refresh may push over the limit: 1% (the budget is on the p99)."""
MIN_UNIT = 50
"""The smallest unit (entities per round trip): below it a unit's round trip costs more than its rows."""
MIN_DUTY = 0.02
"""The smallest share of time spent writing, so a refresh always ends."""
DUTY_STEP = 0.1
"""Additive increase of the duty after a window without congestion."""
IDLE_TIMEOUT = 5.0
"""Seconds the pacer waits for the first idle probes; without them it writes unpaced (and says so)."""


def quantile(values: "list[float] | deque[float]", q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank; 0.0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class ProbeSource(Protocol):
    """Where a pacer's probes come from (:class:`ForkedProber`, or a fake in the tests)."""

    interval: float
    """Seconds between two probes (on average)."""

    def writing(self, on: bool) -> None:
        """The refresh starts (``True``) or ends (``False``) a unit."""

    def samples(self) -> list[tuple[float, bool]]:
        """Probes finished since the last call: (seconds, whether a unit was in flight during it)."""


class RefreshPacer:
    """Paces one refresh's write units against a latency budget (see the module docstring).

    ``source``: the probes (None, or ``budget`` <= 0: pacing off). ``max_unit``: the largest unit (and
    the unit when pacing is off).

    Use: :meth:`measure_idle` once, then ``for start, stop in pacer.units(n):`` write entities
    ``start:stop`` in one round trip. The generator tells the source when a unit is in flight, times
    each unit, reads the probes, decides the speed and pauses before yielding the next unit.
    :meth:`report` says what it did.
    """

    def __init__(
        self,
        budget: float,
        max_unit: int,
        source: Optional[ProbeSource] = None,
        *,
        min_unit: int = MIN_UNIT,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_unit < 1:
            raise ValueError(f"the largest unit must be >= 1 entity, got {max_unit}")
        self.budget = float(budget)
        self.source = source if self.budget > 0 else None
        self.enabled = self.source is not None
        self.interval = getattr(source, "interval", PROBE_INTERVAL)
        self.max_unit = max_unit
        self.min_unit = max(1, min(min_unit, max_unit))
        self.unit = self.min_unit if self.enabled else max_unit  # a paced refresh starts gently, earns larger units
        self.duty = 1.0
        self._clock = clock
        self._sleep = sleep
        self.idle: deque[float] = deque(maxlen=IDLE_WINDOW)
        self._idle_stats: Optional[tuple[float, float]] = None  # (limit, idle share over it), see _stats()
        self._idle_new = 0
        self.first_idle_quantile = 0.0
        self.window: list[float] = []  # since the last change of speed: the readers probes during units stand for
        self.window_probes = 0  # ... and how many readers all probes stand for
        self._during_at_window = 0  # len(self.during) when the window started
        self.during: list[float] = []  # every probe taken while a unit was in flight
        self.rows = 0
        self.units_written = 0
        self.work_seconds = 0.0
        self.paused_seconds = 0.0
        self.slowdowns = 0
        self.speedups = 0
        self.smallest_unit = self.unit
        self.lowest_duty = 1.0
        self.note = ""

    # --- probes -------------------------------------------------------------------------------
    def measure_idle(self, n: int = IDLE_PROBES, timeout: float = IDLE_TIMEOUT) -> None:
        """Wait for ``n`` probes before writing: the first idle latencies. Without them within ``timeout``
        seconds, pacing is turned off (logged, and noted in the report)."""
        if not self.enabled:
            return
        began = self._clock()
        while len(self.idle) < n and self._clock() - began < timeout:
            self._sleep(self.interval * 5)
            self.read_probes()
        if len(self.idle) < n:
            self.enabled, self.source, self.unit = False, None, self.max_unit
            self.note = f"no pacing: {len(self.idle)} of {n} probes answered within {timeout:g}s"
            log.warning("refresh %s", self.note)
            return
        self.new_window()
        self.first_idle_quantile = quantile(self.idle, IDLE_QUANTILE)

    def read_probes(self) -> None:
        """Take the source's new probes into account."""
        if self.source is not None:
            for seconds, during in self.source.samples():
                self.record(seconds, during)

    def record(self, seconds: float, during: bool) -> None:
        """Count one probe: ``during`` a unit, or an idle one (an idle latency once); in the window with the
        readers it stands for (``seconds`` less one, two, ... probe intervals, while over an interval)."""
        if during:
            self.during.append(seconds)
        else:
            self.idle.append(seconds)
            self._idle_new += 1
            if self._idle_new >= IDLE_REFRESH:
                self._idle_stats = None
        value = seconds
        for _ in range(MAX_STAND_FOR):
            self.window_probes += 1
            if during:
                self.window.append(value)
            value -= self.interval
            if value < self.interval:
                break

    def _stats(self) -> tuple[float, float]:
        if self._idle_stats is None:
            limit = self.budget * quantile(self.idle, IDLE_QUANTILE) if self.idle else math.inf
            over = sum(x > limit for x in self.idle) / len(self.idle) if self.idle else 0.0
            self._idle_stats, self._idle_new = (limit, over), 0
        return self._idle_stats

    @property
    def limit(self) -> float:
        """Seconds: the budget x the p90 of the idle latencies (infinite before any was measured)."""
        return self._stats()[0]

    def surplus(self) -> tuple[float, float]:
        """Readers (probes and those they stand for) the refresh pushed over the limit since the last change
        of speed: those over it during units less what idle latencies would give; and its noise (the
        square root of the latter: a count of rare events)."""
        limit, idle_over = self._stats()
        expected = idle_over * len(self.window)
        return sum(x > limit for x in self.window) - expected, math.sqrt(expected)

    def excess(self) -> float:
        """Share of readers the refresh pushed over the limit since the last change of speed."""
        return self.surplus()[0] / max(self.window_probes, 1)

    # --- deciding -----------------------------------------------------------------------------
    def after_unit(self, rows: int, work_seconds: float) -> float:
        """Account one unit (``rows`` written in ``work_seconds``), read the probes and adapt the speed:
        congestion slows down at once, a window without it speeds up. Returns the pause before the next unit."""
        self.rows += rows
        self.units_written += 1
        self.work_seconds += work_seconds
        if not self.enabled:
            return 0.0
        self.read_probes()
        surplus, noise = self.surplus()
        allowed = TARGET_SHARE * self.window_probes
        over_probes = sum(x > self.limit for x in self.during[self._during_at_window :])
        if self.window_probes >= MIN_EVIDENCE and over_probes >= MIN_OVER and surplus - 2 * noise > allowed:
            self._slow_down()
        elif self.window_probes >= WINDOW and surplus <= allowed / 2:
            self._speed_up()
        return work_seconds * (1.0 / self.duty - 1.0)

    def _slow_down(self) -> None:
        if self.unit > self.min_unit:
            self.unit = max(self.min_unit, self.unit // 2)
        elif self.duty > MIN_DUTY:
            self.duty = max(MIN_DUTY, self.duty / 2)
        else:
            self.new_window()
            return  # already at the slowest
        self.slowdowns += 1
        self.smallest_unit = min(self.smallest_unit, self.unit)
        self.lowest_duty = min(self.lowest_duty, self.duty)
        self.new_window()

    def _speed_up(self) -> None:
        if self.duty < 1.0:
            self.duty = min(1.0, round(self.duty + DUTY_STEP, 6))
        elif self.unit < self.max_unit:
            self.unit = min(self.max_unit, self.unit + max(1, self.max_unit // 8))
        else:
            self.new_window()
            return  # already at full speed
        self.speedups += 1
        self.new_window()

    def new_window(self) -> None:
        """Forget the probes of the window (at a change of speed: the new speed needs its own)."""
        self.window, self.window_probes, self._during_at_window = [], 0, len(self.during)

    # --- the loop -----------------------------------------------------------------------------
    def units(self, total: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of each unit of ``total`` entities. Between two yields the caller writes a
        unit (the source is told it is in flight); the pacer then times it, decides and pauses."""
        start = 0
        while start < total:
            stop = min(total, start + self.unit)
            if self.source is not None:
                self.source.writing(True)
            began = self._clock()
            try:
                yield start, stop
            finally:
                if self.source is not None:
                    self.source.writing(False)
            pause = self.after_unit(stop - start, self._clock() - began)
            if pause > 0 and stop < total:
                self._sleep(pause)
                self.paused_seconds += pause
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
            return self.note or "not paced"
        return (
            f"paced to {self.budget:g}x the idle probes' p90 ({1000 * quantile(self.idle, IDLE_QUANTILE):.2f} ms): probes "
            f"during writes p50 {1000 * quantile(self.during, 0.5):.2f} ms, p99 {1000 * quantile(self.during, 0.99):.2f} ms; "
            f"paused {self.paused_seconds:.1f}s; ended at unit {self.unit} of {self.max_unit}, duty {self.duty:.2f} "
            f"(slowest: unit {self.smallest_unit}, duty {self.lowest_duty:.2f})"
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
        if self.note:
            out["note"] = self.note
        if self.enabled:
            self._idle_stats = None  # from every idle latency so far
            limit, idle_over = self._stats()
            out.update(
                duty=round(self.duty, 3),
                smallest_unit=self.smallest_unit,
                lowest_duty=round(self.lowest_duty, 3),
                slowdowns=self.slowdowns,
                speedups=self.speedups,
                first_idle_probe_p90_ms=ms(self.first_idle_quantile),
                idle_probe_p50_ms=ms(quantile(self.idle, 0.5)),
                idle_probe_p90_ms=ms(quantile(self.idle, IDLE_QUANTILE)),
                idle_probe_p99_ms=ms(quantile(self.idle, 0.99)),
                limit_ms=ms(limit) if math.isfinite(limit) else None,
                idle_share_over_limit=round(idle_over, 4),
                probes_during_writes=len(self.during),
                probe_during_p50_ms=ms(quantile(self.during, 0.5)),
                probe_during_p99_ms=ms(quantile(self.during, 0.99)),
                probes_during_over_limit=sum(x > limit for x in self.during),
            )
        return out


class ForkedProber:
    """A :class:`ProbeSource`: times ``probe()`` every ~``interval`` seconds in a forked child process.

    The child sleeps between probes, so it wakes like a serving process and its latencies are what a
    reader meets (see the module docstring). Samples travel through shared memory (a ring of
    :data:`RING` latencies, negative for probes during a unit). Use it as a context manager: the child
    never outlives the refresh.

    * :meth:`close` (the refresh's ``finally``, whatever ended it) asks the child to stop, then sends it
      SIGTERM, then SIGKILL, joining it each time: a child stuck in a probe (a Redis that stopped
      answering) is killed too.
    * The child drops the signal handlers it inherited (an Airflow task's SIGTERM handler raises an
      exception its probe loop would swallow), so SIGTERM and SIGINT end it.
    * When the refreshing process dies without closing it (SIGKILL, a crash): on Linux the kernel kills
      the child at once (``PR_SET_PDEATHSIG``); elsewhere the child sees its parent gone after its
      current probe.

    ``probe`` must work in a forked child: a redis-py client does, whatever its connection (TLS,
    password, a cluster): the child's first command sees the pool belongs to another process and opens
    connections of its own with the client's settings, never touching the parent's sockets. No fork
    (not Linux/macOS), or a process that may not have children (a daemonic multiprocessing worker),
    or a failed fork: :meth:`start` returns False, logs why, and the refresh writes unpaced.
    """

    RING = 8192

    def __init__(self, probe: Callable[[], Any], interval: float = PROBE_INTERVAL) -> None:
        self._probe, self.interval = probe, interval
        self._process: Any = None
        self._read = 0
        self.why_not = ""

    @property
    def pid(self) -> Optional[int]:
        """The child's process id while it runs."""
        return None if self._process is None else self._process.pid

    def start(self) -> bool:
        import multiprocessing

        if "fork" not in multiprocessing.get_all_start_methods():
            self.why_not = "no fork on this platform"
        else:
            try:
                ctx = multiprocessing.get_context("fork")
                self._ring = ctx.RawArray("d", self.RING)
                self._count = ctx.RawValue("q", 0)
                self._flag = ctx.RawValue("b", 0)  # a unit is in flight
                self._units = ctx.RawValue("q", 0)  # units started so far
                self._stop = ctx.RawValue("b", 0)
                process = ctx.Process(target=self._run, args=(os.getpid(),), name="refresh-prober", daemon=True)
                process.start()
                self._process = process
                return True
            except Exception as error:  # e.g. "daemonic processes are not allowed to have children", EAGAIN
                self.why_not = f"the prober process could not start ({type(error).__name__}: {error})"
        log.warning("refresh pacing off: %s, so readers' latency cannot be probed", self.why_not)
        return False

    def _run(self, parent: int) -> None:  # pragma: no cover - runs in the child (tested through the pacer)
        import gc
        import signal

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before the death signal was armed
            return
        # The child shares the parent's pages until it writes them: a collection walking the parent's
        # objects would copy them all and stall the first probes (~100 ms measured); the probes allocate
        # nothing that needs collecting.
        gc.disable()
        rng = random.Random(os.getpid())
        n = 0
        try:
            self._probe()  # the child's first read opens its connection (and may load the script): not a latency
        except Exception:
            pass
        while not self._stop.value and os.getppid() == parent:
            during, units = self._flag.value, self._units.value
            began = time.perf_counter()
            try:
                self._probe()
            except Exception:  # the refresh itself will meet and report a broken connection
                time.sleep(self.interval * 10)
                continue
            seconds = time.perf_counter() - began
            # during a unit: one was in flight when the probe was sent or answered, or started in between
            during = during or self._flag.value or self._units.value != units
            self._ring[n % self.RING] = -seconds if during else seconds
            n += 1
            self._count.value = n
            time.sleep(self.interval * rng.uniform(0.5, 1.5))

    def writing(self, on: bool) -> None:
        if self._process is not None:
            if on:
                self._units.value += 1
            self._flag.value = 1 if on else 0

    def samples(self) -> list[tuple[float, bool]]:
        if self._process is None:
            return []
        n = self._count.value
        first = max(self._read, n - self.RING + 1)  # the child may have lapped the ring (a long pause)
        values = [self._ring[i % self.RING] for i in range(first, n)]
        self._read = n
        return [(abs(v), v < 0) for v in values]

    def close(self) -> None:
        """Stop the child and reap it: asked (it stops after its current probe), then SIGTERM, then
        SIGKILL, each followed by a join; idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        self._stop.value = 1
        process.join(timeout=2)
        if process.is_alive():
            process.terminate()
            process.join(timeout=2)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        if process.is_alive():  # pragma: no cover - SIGKILL not delivered within 5 s (a stuck kernel call)
            log.error("the refresh's prober process %s did not die after SIGKILL", process.pid)
        else:
            process.close()

    def __enter__(self) -> "ForkedProber":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: have the kernel SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``)."""
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the probe loop's parent check remains
        pass
