"""Refresh pacing: the pacer's control on a fake clock, the prober process' life (it never outlives the
refresh), and paced refreshes against the session's Redis."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from online_helpers import snapshot, tables

from recsys.online import pacing
from recsys.online.pacing import ForkedProber, RefreshPacer

MS = 0.001


class FakeMachine:
    """A fake clock, sleep and probe source: a probe is sent every ``interval`` seconds of the clock and
    takes ``idle`` seconds, or ``during`` when a unit is in flight at its start; a unit costs ``work``."""

    def __init__(self, idle: float = 1 * MS, during: float = 1 * MS, work: float = 2 * MS, interval: float = 2 * MS):
        self.now = 0.0
        self.idle, self.during, self.work, self.interval = idle, during, work, interval
        self.changes = [(0.0, False)]  # (time, a unit is in flight from then on)
        self.next_probe = 0.0
        self.slept: list[float] = []
        self.probes = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    # the ProbeSource
    def writing(self, on: bool) -> None:
        self.changes.append((self.now, on))

    def samples(self) -> list[tuple[float, bool]]:
        out = []
        while self.next_probe <= self.now:
            during = [on for at, on in self.changes if at <= self.next_probe][-1]
            out.append((self.during if during else self.idle, during))
            self.next_probe += self.interval
        self.probes += len(out)
        return out

    def pacer(self, budget: float = 2.0, max_unit: int = 1000, **kwargs) -> RefreshPacer:
        return RefreshPacer(budget, max_unit, self, clock=self.clock, sleep=self.sleep, **kwargs)

    def write(self, pacer: RefreshPacer, total: int) -> list[int]:
        """Drive ``pacer.units(total)`` as a refresh does; returns each unit's size."""
        sizes = []
        for start, stop in pacer.units(total):
            sizes.append(stop - start)
            self.now += self.work
        return sizes


def test_the_pacer_slows_down_when_probes_exceed_the_budget_and_speeds_back_up():
    machine = FakeMachine(idle=1 * MS, during=5 * MS)  # writing makes a read 5x slower: over 2x
    pacer = machine.pacer()
    pacer.measure_idle()
    assert machine.probes >= pacing.IDLE_PROBES and pacer.limit == pytest.approx(2 * MS)
    assert len(machine.slept) <= pacing.IDLE_PROBES // 5 + 1  # waited ~0.4 s of the clock for them, no more

    machine.slept.clear()
    sizes = machine.write(pacer, 5000)
    assert sum(sizes) == 5000
    # a paced refresh starts at the smallest unit; congestion then halves the duty, one window at a time
    assert set(sizes) == {pacing.MIN_UNIT} and pacer.duty == pacing.MIN_DUTY and pacer.slowdowns == 6
    assert machine.slept and pacer.paused_seconds == pytest.approx(sum(machine.slept))
    # each pause keeps the share of time spent writing at the duty: pause = work x (1/duty - 1)
    assert machine.slept[-1] == pytest.approx(machine.work * (1 / pacer.duty - 1))

    # the writes stop hurting readers: the pacer speeds up again, duty first, then the unit
    machine.during = 1.2 * MS
    sizes = machine.write(pacer, 2_000_000)
    assert pacer.duty == 1.0 and pacer.unit == 1000 and pacer.speedups >= 10 + 8 and sizes[-2] == 1000
    report = pacer.report()
    assert report["enabled"] and report["slowdowns"] == 6 and report["speedups"] == pacer.speedups
    assert report["smallest_unit"] == pacing.MIN_UNIT and report["lowest_duty"] == pacing.MIN_DUTY
    assert report["limit_ms"] == pytest.approx(2.0) and report["probes_during_writes"] > 100
    assert report["probes_during_over_limit"] >= 2 * report["slowdowns"]  # two slow probes per slowdown


def test_probes_within_the_budget_never_slow_the_refresh_down():
    machine = FakeMachine(idle=1 * MS, during=1.9 * MS)
    pacer = machine.pacer()
    pacer.measure_idle()
    machine.slept.clear()
    sizes = machine.write(pacer, 2_000_000)
    assert sizes[0] == pacing.MIN_UNIT and sizes[-2] == 1000 and pacer.duty == 1.0
    assert not machine.slept and pacer.slowdowns == 0 and pacer.speedups == 8  # 50, 175, ..., 925, 1000
    assert pacer.report()["probes_during_over_limit"] == 0


def _idle(pacer: RefreshPacer, n: int = 200, slow_every: int = 0) -> None:
    for i in range(n):
        pacer.record(3 * MS if slow_every and i % slow_every == 0 else 1 * MS, during=False)
    pacer.new_window()


def test_the_excess_share_of_slow_probes_is_what_counts():
    """Probes are spread over time as readers are: at a low duty few of them meet a unit."""
    pacer = RefreshPacer(2.0, 1000, FakeMachine(interval=10 * MS))
    _idle(pacer)
    assert pacer.limit == pytest.approx(2 * MS)  # the budget x the median idle probe
    for n in range(300):  # 30 probes during units, 2 of them slow: 0.7% of readers
        pacer.record(5 * MS if n in (0, 150) else 1 * MS, during=n % 10 == 0)
    assert pacer.excess() == pytest.approx(2 / 300)
    assert pacer.after_unit(100, 0.01) == 0.0 and pacer.slowdowns == pacer.speedups == 0
    pacer.record(5 * MS, during=True)  # 4 of 302: over the 1% readers may be pushed over the limit
    pacer.record(5 * MS, during=True)
    pacer.after_unit(100, 0.01)
    assert pacer.slowdowns == 1 and pacer.duty == 0.5 and pacer.window == [] and pacer.window_probes == 0


def test_slow_probes_the_idle_ones_have_too_are_not_the_refreshs():
    pacer = RefreshPacer(2.0, 1000, FakeMachine(interval=10 * MS))
    _idle(pacer, slow_every=10)  # 10% of idle probes take 3 ms: over the limit of 2 ms
    for n in range(300):  # and so do 10% of the probes during units: the machine, not the writes
        pacer.record(3 * MS if n % 10 == 0 else 1 * MS, during=True)
    assert pacer.excess() == pytest.approx(0.0) and pacer.report()["idle_share_over_limit"] == 0.1
    pacer.after_unit(1000, 0.01)
    assert pacer.slowdowns == 0 and pacer.speedups == 1 and pacer.unit == 50 + 1000 // 8


def test_one_slow_probe_is_noise_two_are_congestion():
    pacer = RefreshPacer(2.0, 1000, FakeMachine(interval=10 * MS))
    _idle(pacer)
    for _ in range(pacing.MIN_EVIDENCE - 2):
        pacer.record(1 * MS, during=True)
    pacer.record(5 * MS, during=True)
    assert pacer.after_unit(50, 0.01) == 0.0 and pacer.slowdowns == 0 and pacer.duty == 1.0
    pacer.record(5 * MS, during=True)
    pacer.after_unit(50, 0.01)
    assert pacer.slowdowns == 1 and pacer.duty == 0.5 and pacer.window == []


def test_a_slowdown_needs_a_window_of_evidence():
    """After a slowdown the next needs MIN_EVIDENCE new probes: a burst of noise costs one halving."""
    pacer = RefreshPacer(2.0, 1000, FakeMachine(interval=10 * MS))
    _idle(pacer)
    for _ in range(pacing.MIN_EVIDENCE):
        pacer.record(5 * MS, during=True)
    pacer.after_unit(50, 0.01)
    for _ in range(pacing.MIN_EVIDENCE - 1):
        pacer.record(5 * MS, during=True)
        pacer.after_unit(50, 0.01)
    assert pacer.slowdowns == 1 and pacer.duty == 0.5
    pacer.record(5 * MS, during=True)
    pacer.after_unit(50, 0.01)
    assert pacer.slowdowns == 2 and pacer.duty == 0.25


def test_a_probe_that_waited_stands_for_the_readers_that_arrived_meanwhile():
    """A 20 ms stall met by one probe (every 2 ms) is ten slow reads: 20, 18, ..., 2 ms."""
    pacer = RefreshPacer(2.0, 1000, FakeMachine(interval=2 * MS))
    pacer.record(20 * MS, during=True)
    assert pacer.window == pytest.approx([x * MS for x in range(20, 1, -2)]) and pacer.window_probes == 10
    assert pacer.during == [20 * MS] and not pacer.idle
    pacer.record(20 * MS, during=False)  # an idle latency once (the limit), ten readers in the window
    assert list(pacer.idle) == [20 * MS] and pacer.window_probes == 20 and len(pacer.window) == 10


def test_a_busier_machine_raises_the_idle_latencies_not_the_pacing():
    """Probes between units are idle ones: when everything gets slower, the limit follows."""
    machine = FakeMachine(idle=1 * MS, during=1.5 * MS, work=2 * MS)
    pacer = machine.pacer()
    pacer.measure_idle()
    machine.idle, machine.during = 4 * MS, 6 * MS  # another process now loads the machine
    machine.write(pacer, 4_000_000)
    assert pacer.limit == pytest.approx(8 * MS)
    assert pacer.unit == 1000 and pacer.duty == 1.0
    assert pacer.report()["first_idle_probe_p90_ms"] == pytest.approx(1.0)


def test_a_budget_of_zero_turns_pacing_off():
    machine = FakeMachine(during=50 * MS)
    pacer = machine.pacer(budget=0)
    pacer.measure_idle()
    sizes = machine.write(pacer, 2500)
    assert sizes == [1000, 1000, 500] and machine.probes == 0 and not machine.slept
    assert pacer.report() == {
        "budget": 0.0, "enabled": False, "units": 3, "unit": 1000, "max_unit": 1000,
        "write_seconds": pytest.approx(0.006), "paused_seconds": 0.0,
    }


def test_without_probes_the_refresh_writes_unpaced_and_says_so():
    class Silent:
        def writing(self, on):
            pass

        def samples(self):
            return []

    clock = FakeMachine()
    pacer = RefreshPacer(2.0, 1000, Silent(), clock=clock.clock, sleep=clock.sleep)
    pacer.measure_idle()
    assert not pacer.enabled and pacer.unit == 1000 and clock.now == pytest.approx(pacing.IDLE_TIMEOUT, abs=0.05)
    assert "no pacing" in pacer.report()["note"] and pacer.summary().startswith("no pacing")


def test_the_forked_prober_tags_probes_taken_while_a_unit_is_in_flight():
    state = {"slow": False}

    def probe():
        time.sleep(0.004 if state["slow"] else 0.0)

    with ForkedProber(probe, interval=0.001) as prober:
        assert prober.start()
        deadline = time.monotonic() + 5
        idle = []
        while len(idle) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
            idle += prober.samples()
        prober.writing(True)
        time.sleep(0.05)
        prober.writing(False)
        time.sleep(0.01)
        later = prober.samples()
    assert len(idle) >= 20 and not any(during for _, during in idle)
    assert any(during for _, during in later) and not all(during for _, during in later)
    assert all(0 <= seconds < 1 for seconds, _ in idle + later)
    assert prober._process is None  # closed: the child is gone


def _alive(pid: int) -> bool:
    """The process runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _probers() -> list:
    return [p for p in multiprocessing.active_children() if p.name == "refresh-prober"]


def _stuck_probe() -> None:
    time.sleep(60)  # a Redis that stopped answering: the probe never returns


def _deaf_stuck_probe() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def test_close_reaps_a_prober_stuck_in_a_probe_whatever_the_signal_handlers():
    # a SIGTERM handler in the refreshing process (a task runner's), which the fork inherits: the child
    # resets it, so SIGTERM ends a child stuck in a probe
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        with ForkedProber(_stuck_probe) as prober:
            assert prober.start()
            pid = prober.pid
            time.sleep(0.2)
            began = time.monotonic()
        assert time.monotonic() - began < 4.5 and not _alive(pid) and prober.pid is None
    finally:
        signal.signal(signal.SIGTERM, previous)
    # a child that ignores SIGTERM anyway: SIGKILL
    prober = ForkedProber(_deaf_stuck_probe)
    assert prober.start()
    pid = prober.pid
    time.sleep(0.2)
    began = time.monotonic()
    prober.close()
    prober.close()  # idempotent
    assert time.monotonic() - began < 10 and not _alive(pid) and not _probers()


def test_without_a_prober_process_the_refresh_writes_unpaced_and_says_why(monkeypatch, make_store):
    """A process that may not have children (a daemonic multiprocessing worker): no pacing, no failure."""
    import multiprocessing.process

    monkeypatch.setitem(multiprocessing.process.current_process()._config, "daemon", True)
    result = make_store(batch_size=100).refresh(snapshot(tables(n_users=300, n_items=50)), read_budget=2.0)
    assert result.pacing["enabled"] is False and "could not start" in result.pacing["note"]
    assert "daemonic processes are not allowed to have children" in result.pacing["note"]
    assert result.users_written == 300 and not _probers()


def test_a_paced_refresh_that_fails_reaps_its_prober(make_store, monkeypatch):
    pids = []
    real_start = ForkedProber.start

    def start(self):
        started = real_start(self)
        pids.append(self.pid)
        return started

    monkeypatch.setattr(ForkedProber, "start", start)

    def fail(kind, written):
        assert _alive(pids[-1])
        raise RuntimeError("the refresh's hook failed")

    store = make_store(batch_size=100)
    with pytest.raises(RuntimeError, match="hook failed"):
        store.refresh(snapshot(tables(n_users=300, n_items=50)), read_budget=2.0, on_batch=fail)
    assert len(pids) == 1 and not _alive(pids[0]) and not _probers()
    assert store.current() is None  # and the half version was removed, as without pacing


KILLED_REFRESH = """
import multiprocessing, sys, time
sys.path.insert(0, {tests!r})
from online_helpers import snapshot, tables
from recsys.online.redis_store import RedisOnlineStore
from recsys.settings import get_settings, replace

store = RedisOnlineStore.from_settings(replace(get_settings(), online_key_prefix={prefix!r}, online_batch_size=100))

def hold(kind, written):
    print(*[p.pid for p in multiprocessing.active_children()], flush=True)
    time.sleep(600)

store.refresh(snapshot(tables(n_users=300, n_items=50)), read_budget=2.0, on_batch=hold)
"""

STUCK_PROBER = """
import time
from recsys.online.pacing import ForkedProber

prober = ForkedProber(lambda: time.sleep(600))
assert prober.start()
print(prober.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("script", ["refresh", "stuck prober"])
def test_a_refreshing_process_killed_by_sigkill_takes_its_prober_with_it(script, stack_settings, redis_client):
    """``kill -9`` of the refresh (no finally runs): the child goes too, even one stuck in a probe (the
    kernel's parent-death signal; a child that is between probes also sees its parent gone)."""
    prefix = f"killed-{os.getpid()}-{time.monotonic_ns()}"
    code = STUCK_PROBER if script == "stuck prober" else KILLED_REFRESH.format(
        tests=str(Path(__file__).parent), prefix=prefix)
    refresh = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    try:
        line = refresh.stdout.readline().split()
        assert len(line) == 1, line  # one child: the prober
        prober = int(line[0])
        assert _alive(prober)
        refresh.kill()
        refresh.wait(timeout=10)
        assert _gone_within(prober, 3)
    finally:
        if refresh.poll() is None:
            refresh.kill()
        for key in redis_client.scan_iter(match=f"{{{prefix}}}:*", count=1000):
            redis_client.unlink(key)


def test_quantile_is_nearest_rank():
    assert pacing.quantile([], 0.99) == 0.0
    assert pacing.quantile(list(range(1, 101)), 0.99) == 99
    assert pacing.quantile(list(range(1, 201)), 0.99) == 198
    assert pacing.quantile([3.0], 0.5) == 3.0


# --- paced refreshes on the session's Redis ------------------------------------------------------


def _version_contents(client, store, version) -> dict:
    out = {}
    for suffix in ("u", "s", "i", "d"):
        out[suffix] = client.hgetall(store.key(version, suffix))
    for suffix in ("pop", "hu", "hi"):
        out[suffix] = client.get(store.key(version, suffix))
    return out


BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1])
return 0
"""


def _congest_units(store, client, units: int = 20):
    """Make Redis busy for the first ``units`` write units of the store's next refresh (a script that
    spins 10x the p99 of 50 PINGs, 20-200 ms: what a heavy unit does to readers), so the pacer's probes
    meet congestion and it has to slow down."""
    real_send = store._send_pipelined
    state = {"left": units, "micros": 0}

    def send(commands):
        if state["left"] <= 0:
            return real_send(commands)
        if not state["micros"]:
            pings = []
            for _ in range(50):
                began = time.perf_counter()
                client.ping()
                pings.append(time.perf_counter() - began)
            state["micros"] = int(1e6 * min(0.2, max(0.02, 10 * pacing.quantile(pings, 0.99))))
        state["left"] -= 1
        return real_send([("EVAL", BUSY, 0, state["micros"]), *commands])[1:]

    store._send_pipelined = send


def test_a_paced_full_refresh_writes_the_same_complete_version_and_reports_its_rate(make_store, redis_client):
    t = tables(n_users=2000, n_items=500)
    unpaced = make_store(batch_size=100)
    plain = unpaced.refresh(snapshot(t))
    assert plain.pacing["enabled"] is False and plain.pacing["units"] == 20 + 5

    paced = make_store(batch_size=100)  # the same key prefix: the paced version is the next one
    _congest_units(paced, redis_client)
    result = paced.refresh(snapshot(t), force=True, read_budget=2.0)
    assert result.version != plain.version
    assert (result.mode, result.users_written, result.items_written) == ("full", 2000, 500)
    assert _version_contents(redis_client, paced, result.version) == _version_contents(redis_client, unpaced, plain.version)
    assert paced.current().version == result.version
    assert paced.read(1000, [5000]).user_found

    report = result.pacing
    assert report["enabled"] and report["budget"] == 2.0
    # twenty congested units (a few slow probes each): the duty halves
    assert report["probes_during_over_limit"] >= 2 and report["slowdowns"] >= 2 and report["units"] > 25
    assert report["smallest_unit"] == pacing.MIN_UNIT and report["lowest_duty"] <= 0.5
    assert report["paused_seconds"] > 0 and report["limit_ms"] == pytest.approx(2 * report["idle_probe_p90_ms"], rel=0.01)
    assert result.rows == 2500 and result.rows_per_second == pytest.approx(2500 / result.seconds, rel=0.01)
    assert result.seconds >= report["paused_seconds"]
    as_dict = result.to_dict()
    assert as_dict["rows_per_second"] == result.rows_per_second and as_dict["pacing"] == report


def test_a_paced_incremental_refresh_copies_in_paced_units_and_equals_a_full_refresh(make_store, redis_client):
    t = tables(n_users=2000, n_items=500)
    t2 = {k: v.copy() for k, v in t.items()}
    t2["users"].loc[:99, "segment"] += 1  # 100 users changed: written; 1900 users and 500 items copied
    store = make_store(batch_size=100)
    store.refresh(snapshot(t))
    _congest_units(store, redis_client)
    result = store.refresh(snapshot(t2, feature_version="fv2"), incremental=True, read_budget=2.0)
    assert result.mode == "incremental" and (result.users_written, result.items_written) == (100, 0)
    assert (result.users_copied, result.items_copied) == (1900, 500)
    report = result.pacing
    assert report["slowdowns"] >= 2 and report["lowest_duty"] <= 0.25 and report["paused_seconds"] > 0
    # copies and writes both go through the pacer's units (from 50 entities, the smallest, up to 100)
    assert 1 + 1900 // 100 + 500 // 100 < report["units"] <= 2 + 1900 // 50 + 500 // 50

    full = make_store()
    full.refresh(snapshot(t2, feature_version="fv2"))
    assert _version_contents(redis_client, store, result.version) == _version_contents(
        redis_client, full, full.current().version
    )


def test_the_refresh_job_paces_with_the_settings_budget(stack_settings, redis_client, tmp_path):
    """``refresh_online_store`` passes ``online_refresh_read_budget`` (default 2.0); 0 writes at full speed."""
    import uuid

    from online_sample import write_sample_versions

    from recsys import layout
    from recsys.data.versioning import read_manifest
    from recsys.online.refresh import refresh_online_store
    from recsys.settings import replace

    features = write_sample_versions(tmp_path, n_users=40, n_items=10, n_interactions=200)
    data = layout.data_dir(replace(stack_settings, home=tmp_path), str(read_manifest(features)["data_version"]))
    prefix = f"pacing-{uuid.uuid4().hex[:8]}"
    s = replace(stack_settings, online_key_prefix=prefix)
    try:
        out = refresh_online_store(str(features), str(data), settings=s)
        assert out["pacing"]["enabled"] and out["pacing"]["budget"] == s.online_refresh_read_budget == 2.0
        assert out["pacing"]["units"] == 2 and out["pacing"]["first_idle_probe_p90_ms"] > 0  # 40 users, 10 items
        assert out["rows"] == 50 and out["rows_per_second"] > 0
        out = refresh_online_store(str(features), str(data), force=True, settings=replace(s, online_refresh_read_budget=0))
        assert out["pacing"]["enabled"] is False and out["pacing"]["paused_seconds"] == 0
    finally:
        for key in redis_client.scan_iter(match=f"{{{prefix}}}:*", count=1000):
            redis_client.unlink(key)
