"""The retrain decision on its own: hysteresis and cooldown (a pure function, no services)."""

from datetime import datetime, timedelta, timezone

from recsys.monitoring.decision import decide

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def _entry(hours_ago: float, drift: bool, trigger: bool = False, champion: str = "run-a", check_id: str = "c") -> dict:
    at = (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"check_id": check_id, "checked_at": at, "drift": drift, "trigger": trigger, "champion_run_id": champion}


def _decide(drift, previous, required=2, cooldown=24.0, champion="run-a"):
    return decide(drift, previous, champion_run_id=champion, now=NOW, required_consecutive=required, cooldown_hours=cooldown)


def test_no_drift_never_triggers():
    d = _decide(False, [_entry(1, True), _entry(2, True)])
    assert (d.trigger, d.consecutive, d.reason) == (False, 0, "no drift")


def test_hysteresis_needs_consecutive_drifted_checks():
    first = _decide(True, [])
    assert not first.trigger and first.consecutive == 1
    assert first.reason == "drift in 1 of 2 required consecutive checks"
    second = _decide(True, [_entry(1, True)])
    assert second.trigger and second.consecutive == 2 and second.reason.endswith(": retrain")
    # a check without drift in between breaks the streak
    broken = _decide(True, [_entry(2, True), _entry(1, False)])
    assert not broken.trigger and broken.consecutive == 1


def test_a_new_champion_starts_a_new_streak():
    d = _decide(True, [_entry(2, True, champion="old"), _entry(1, True, champion="old")], champion="new")
    assert not d.trigger and d.consecutive == 1


def test_cooldown_after_a_triggered_retrain():
    previous = [_entry(3, True), _entry(2, True, trigger=True, check_id="20260301T100000Z-abcdef")]
    d = _decide(True, previous)
    assert not d.trigger and d.consecutive == 3
    assert d.cooldown_until == "2026-03-02T10:00:00Z"
    assert "cooling down until 2026-03-02T10:00:00Z" in d.reason and "20260301T100000Z-abcdef" in d.reason
    # once the cooldown is over the (still lasting) drift triggers again
    over = [_entry(30, True), _entry(25, True, trigger=True)]
    again = _decide(True, over)
    assert again.trigger and again.cooldown_until is None


def test_one_required_check_and_no_cooldown_trigger_every_time():
    d = _decide(True, [_entry(0.1, True, trigger=True)], required=1, cooldown=0)
    assert d.trigger and d.consecutive == 2


def _judged(entry: dict, data_version: str) -> dict:
    return {**entry, "current_data_version": data_version}


def test_checks_of_the_same_data_version_are_one_piece_of_evidence():
    # The demo's case: two checks seconds apart on one data version must not make a streak of two.
    again = decide(True, [_judged(_entry(0.01, True, check_id="20260301T115900Z-aaaaaa"), "v1")],
                   champion_run_id="run-a", data_version="v1", now=NOW, required_consecutive=2, cooldown_hours=24)
    assert not again.trigger and again.consecutive == 1
    assert "data version v1 was judged by the previous check 20260301T115900Z-aaaaaa too" in again.reason
    assert "not new evidence" in again.reason
    # new data that still drifts does extend it, and repeats further back are not counted twice
    history = [_judged(_entry(3, True), "v1"), _judged(_entry(2, True), "v1")]
    new = decide(True, history, champion_run_id="run-a", data_version="v2", now=NOW, required_consecutive=2,
                 cooldown_hours=24)
    assert new.trigger and new.consecutive == 2 and "not new evidence" not in new.reason
    three = decide(True, history, champion_run_id="run-a", data_version="v2", now=NOW, required_consecutive=3,
                   cooldown_hours=24)
    assert not three.trigger and three.consecutive == 2


def test_a_repeat_of_the_check_that_triggered_does_not_trigger_again():
    history = [_judged(_entry(2, True), "v1"), _judged(_entry(1, True, trigger=True, check_id="x"), "v2")]
    d = decide(True, history, champion_run_id="run-a", data_version="v2", now=NOW, required_consecutive=2,
               cooldown_hours=0)
    assert not d.trigger and d.consecutive == 2
    assert "already triggered" in d.reason
