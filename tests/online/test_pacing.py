"""Refresh pacing: the pacer's control on a fake clock, and paced refreshes against the session's Redis."""

from __future__ import annotations

import time

import pytest
from online_helpers import changed_tables, snapshot, tables

from recsys.online import pacing
from recsys.online.pacing import RefreshPacer

MS = 0.001


class FakeMachine:
    """A fake clock, sleep and probe: a probe costs ``idle`` seconds, or ``during`` while a unit is in
    flight (the fake writer sets ``writing``); a unit costs ``work`` seconds of the clock."""

    def __init__(self, idle: float = 1 * MS, during: float = 1 * MS, work: float = 2 * MS) -> None:
        self.now = 0.0
        self.idle, self.during, self.work = idle, during, work
        self.writing = False
        self.slept: list[float] = []
        self.probes = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def probe(self) -> None:
        self.probes += 1
        self.now += self.during if self.writing else self.idle

    def pacer(self, budget: float = 2.0, max_unit: int = 1000, **kwargs) -> RefreshPacer:
        return RefreshPacer(budget, max_unit, self.probe, clock=self.clock, sleep=self.sleep, **kwargs)

    def write(self, pacer: RefreshPacer, total: int) -> list[int]:
        """Drive ``pacer.units(total)`` as a refresh does; returns each unit's size."""
        sizes = []
        for start, stop in pacer.units(total):
            sizes.append(stop - start)
            self.writing = True
            self.now += self.work
            pacer.sample()
            self.writing = False
        return sizes


def test_the_pacer_slows_down_when_probes_exceed_the_budget_and_speeds_back_up():
    machine = FakeMachine(idle=1 * MS, during=5 * MS)  # writing makes a read 5x slower: over 2x
    pacer = machine.pacer()
    pacer.measure_idle()
    assert machine.probes == pacing.IDLE_PROBES and pacer.limit == pytest.approx(2 * MS)

    sizes = machine.write(pacer, 5000)
    assert sum(sizes) == 5000
    # the units halve first (1000, 500, 250, 125, 62, then the smallest), then the duty halves
    assert sizes[:6] == [1000, 500, 250, 125, 62, pacing.MIN_UNIT]
    assert pacer.unit == pacing.MIN_UNIT and pacer.duty < 0.1 and pacer.slowdowns >= 6
    assert machine.slept and pacer.paused_seconds == pytest.approx(sum(machine.slept))
    # each pause keeps the time spent writing at the duty: pause = work x (1/duty - 1) (less the idle probe)
    work = machine.work + machine.during
    assert machine.slept[-1] == pytest.approx(work * (1 / pacer.duty - 1) - machine.idle)

    # the writes stop hurting readers: the pacer speeds up again, duty first, then the unit
    machine.during = 1.2 * MS
    sizes = machine.write(pacer, 500_000)
    assert pacer.duty == 1.0 and pacer.unit == 1000 and pacer.speedups >= 10 and sizes[-2] == 1000
    report = pacer.report()
    assert report["enabled"] and report["slowdowns"] >= 6 and report["speedups"] == pacer.speedups
    assert report["smallest_unit"] == pacing.MIN_UNIT and report["lowest_duty"] < 0.1
    assert report["limit_ms"] == pytest.approx(2.0) and report["probes"] == pacer.units_written


def test_probes_within_the_budget_never_slow_the_refresh_down():
    machine = FakeMachine(idle=1 * MS, during=1.9 * MS)
    pacer = machine.pacer()
    pacer.measure_idle()
    sizes = machine.write(pacer, 50_000)
    assert set(sizes) == {1000} and not machine.slept and pacer.slowdowns == 0
    assert pacer.report()["probes_over_limit"] == 0


def test_at_a_low_duty_a_few_slow_probes_are_within_the_budget():
    """Readers meet a unit with probability = the duty: 30% slow probes at duty 0.02 are 0.6% of readers."""
    pacer = RefreshPacer(2.0, 1000, lambda: None)
    pacer.record_idle(1 * MS)
    pacer.duty = 0.02
    for n in range(100):
        pacer.record_probe(5 * MS if n % 10 < 3 else 1 * MS)
    assert pacer.share_over() == pytest.approx(0.02 * 0.3)
    assert pacer.after_unit(100, 0.01) == pytest.approx(0.01 * 49)  # no slowdown: the pause of duty 0.02
    assert pacer.slowdowns == 0 and pacer.duty == 0.02
    pacer.duty = 0.1  # the same probes at duty 0.1: 3% of readers over the limit
    for n in range(100):
        pacer.record_probe(5 * MS if n % 10 < 3 else 1 * MS)
    pacer.after_unit(100, 0.01)
    assert pacer.slowdowns == 1 and pacer.unit == 500


def test_a_busier_machine_raises_the_idle_latencies_not_the_pacing():
    """Probes after each unit are idle ones: when everything gets slower, the limit follows."""
    machine = FakeMachine(idle=1 * MS, during=1.5 * MS)
    pacer = machine.pacer()
    pacer.measure_idle()
    machine.idle, machine.during = 4 * MS, 6 * MS  # another process now loads the machine
    machine.write(pacer, 400_000)
    assert pacer.limit == pytest.approx(8 * MS)
    assert pacer.unit == 1000 and pacer.duty == 1.0
    assert pacer.report()["first_idle_probe_p99_ms"] == pytest.approx(1.0)


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


def _slow_probes_while_writing(store, slow: int = 3):
    """Make the store's first ``slow`` probe reads while a unit is in flight slower (what heavy writes do
    to a reader): by 10x the slowest idle probe so far, whatever this machine's load, so the pacer has to
    slow down ``slow`` times."""
    real_probe, real_send = store._probe, store._send_pipelined

    def probe(snapshot):
        read = real_probe(snapshot)
        state = {"writing": False, "slowest_idle": 0.0, "slow": slow}

        def timed_read():
            began = time.perf_counter()
            if state["writing"]:
                if state["slow"] > 0:
                    state["slow"] -= 1
                    time.sleep(min(0.1, 10 * state["slowest_idle"]))
                return read()
            reply = read()
            state["slowest_idle"] = max(state["slowest_idle"], time.perf_counter() - began)
            return reply

        def send(commands, during=None):
            def slow_during():
                state["writing"] = True
                try:
                    during()
                finally:
                    state["writing"] = False

            return real_send(commands, during=slow_during if during else None)

        store._send_pipelined = send
        return timed_read

    store._probe = probe


def test_a_paced_full_refresh_writes_the_same_complete_version_and_reports_its_rate(make_store, redis_client):
    t = tables(n_users=300, n_items=120)
    unpaced = make_store(batch_size=100)
    plain = unpaced.refresh(snapshot(t))
    assert plain.pacing["enabled"] is False and plain.pacing["units"] == 3 + 2

    paced = make_store(batch_size=100)  # the same key prefix: the paced version is the next one
    _slow_probes_while_writing(paced)
    result = paced.refresh(snapshot(t), force=True, read_budget=2.0)
    assert result.version != plain.version
    assert (result.mode, result.users_written, result.items_written) == ("full", 300, 120)
    assert _version_contents(redis_client, paced, result.version) == _version_contents(redis_client, unpaced, plain.version)
    assert paced.current().version == result.version
    assert paced.read(1000, [5000]).user_found

    report = result.pacing
    assert report["enabled"] and report["budget"] == 2.0
    assert report["probes"] == report["units"] > 5  # one probe per unit, and the units got smaller
    # three slow probes: the unit halves to the smallest, then the duty halves twice (a busy machine may add more)
    assert report["probes_over_limit"] >= 3 and report["slowdowns"] >= 3
    assert report["smallest_unit"] == pacing.MIN_UNIT and report["lowest_duty"] <= 0.25
    assert report["paused_seconds"] > 0
    assert result.rows == 420 and result.rows_per_second == pytest.approx(420 / result.seconds, rel=0.01)
    assert result.seconds >= report["paused_seconds"]
    as_dict = result.to_dict()
    assert as_dict["rows_per_second"] == result.rows_per_second and as_dict["pacing"] == report


def test_a_paced_incremental_refresh_copies_in_paced_units_and_equals_a_full_refresh(make_store, redis_client):
    t, t2 = changed_tables()
    store = make_store(batch_size=8)
    store.refresh(snapshot(t))
    _slow_probes_while_writing(store)
    result = store.refresh(snapshot(t2, feature_version="fv2"), incremental=True, read_budget=2.0)
    assert result.mode == "incremental" and result.users_copied > 30 and result.items_copied == 22
    report = result.pacing
    assert report["slowdowns"] >= 3 and report["lowest_duty"] <= 0.125 and report["paused_seconds"] > 0
    # copies and writes both go through the pacer's units (of at most 8 entities here)
    assert report["units"] >= (result.rows_written + result.users_copied + result.items_copied) / 8

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
        assert out["pacing"]["probes"] == out["pacing"]["units"] == 2  # 40 users, 10 items: a unit each
        assert out["rows"] == 50 and out["rows_per_second"] > 0
        out = refresh_online_store(str(features), str(data), force=True, settings=replace(s, online_refresh_read_budget=0))
        assert out["pacing"]["enabled"] is False and out["pacing"]["paused_seconds"] == 0
    finally:
        for key in redis_client.scan_iter(match=f"{{{prefix}}}:*", count=1000):
            redis_client.unlink(key)
