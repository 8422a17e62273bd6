"""The event worker: the Redis inbox path (validation, refusals, the live layer, landing), its commands,
its Prometheus endpoint scraped over HTTP, and the stack's ``events`` service (real Redis, real processes)."""

from __future__ import annotations

import argparse
import json
import signal
import time

import pytest

from events_helpers import landed, serve_catalogue, start_worker, wait_for
from recsys.events.log import EVENTS, INBOX
from recsys.events.worker import EventWorker, inbox_event
from shared_helpers import patched_environ


def producer_entries(now_ms: int) -> list[dict]:
    """What a producer XADDs: one good event, one about an unknown item, one of an unknown type."""
    return [
        {"user_id": "1001", "item_id": "5003", "event_type": "click", "timestamp": str(now_ms), "request_id": ""},
        {"user_id": "1002", "item_id": "77777", "event_type": "view", "timestamp": str(now_ms)},
        {"user_id": "1003", "item_id": "5004", "event_type": "teleport", "timestamp": str(now_ms / 1000),
         "request_id": "r-1"},
    ]


def cli(settings, *argv: str, capsys) -> str:
    from recsys.events.cli import register

    parser = argparse.ArgumentParser(prog="recsys")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    with patched_environ(settings.as_env()):
        assert args.func(args) == 0
    return capsys.readouterr().out


def test_inbox_fields_become_the_event_object_validation_checks():
    event = inbox_event({"user_id": "7", "timestamp": "1733520000000", "request_id": ""})
    assert event == {"user_id": "7", "timestamp": 1733520000000}
    assert inbox_event({"timestamp": "1733520000.5"})["timestamp"] == 1733520000.5
    assert inbox_event({"timestamp": "2026-12-06T21:30:00Z"})["timestamp"] == "2026-12-06T21:30:00Z"


def test_the_inbox_path_validates_refuses_applies_and_lands(store, event_log, settings, redis_client, capsys):
    serve_catalogue(store)
    now_ms = int(time.time() * 1000)
    inbox_ids = [redis_client.xadd(store.key_inbox, fields).decode() for fields in producer_entries(now_ms)]

    summary = EventWorker(settings, name="w1", store=store).drain()

    assert summary == {"accepted": 1, "refused": 2, "applied": 1, "parts": 1, "landed": 1}
    assert store.live_items(1001).tolist() == [5003]  # visible to serving
    assert landed(settings.landing)[0] == [(1001, 5003, now_ms, "click")]
    refused = {e.fields["inbox_id"]: e.fields for e in event_log.refused()}
    assert set(refused) == set(inbox_ids[1:])
    assert refused[inbox_ids[1]]["reason"].startswith("item_id: 77777 is not in the served catalogue")
    assert refused[inbox_ids[2]]["reason"].startswith("event_type: 'teleport' is not one of")
    assert refused[inbox_ids[2]]["request_id"] == "r-1"  # the producer's fields are kept as sent
    stats = store.event_stats()
    assert (stats["accepted"], stats["refused"], stats["landed"]) == (1, 2, 1)
    for stream in (INBOX, EVENTS):  # nothing pending in any group, and both streams trimmed
        assert [g.pending for g in event_log.groups(stream)] == [0] * len(event_log.groups(stream))
        assert event_log.length(stream) == 0

    out = cli(settings, "events", "refused", capsys=capsys)
    assert "item_id: 77777 is not in the served catalogue" in out and inbox_ids[2] in out
    report = json.loads(cli(settings, "events", "status", "--json", capsys=capsys))
    assert report["freshness"]["events_landed"] == 1 and report["freshness"]["events_backlog"] == 0
    assert {g["name"] for g in report["streams"]["events"]["groups"]} == {"landing", "live"}
    assert report["parts_in_progress"] == []
    assert "backlog 0" in cli(settings, "events", "status", capsys=capsys)


def test_inbox_entries_wait_pending_while_there_is_no_catalogue(store, event_log, settings, redis_client):
    from recsys.online.store import NoOnlineVersionError

    redis_client.xadd(store.key_inbox, producer_entries(int(time.time() * 1000))[0])
    with pytest.raises(NoOnlineVersionError):
        EventWorker(settings, name="w1", store=store).drain()
    assert [g.pending for g in event_log.groups(INBOX)] == [1]
    serve_catalogue(store)
    assert EventWorker(settings, name="w1", store=store).drain()["accepted"] == 1


def test_the_worker_serves_metrics_and_stops_on_sigterm(store, settings, redis_client, tmp_path):
    import httpx

    serve_catalogue(store)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, "metrics-worker", log)
    try:
        for fields in producer_entries(int(time.time() * 1000))[:2]:
            redis_client.xadd(store.key_inbox, fields)
        wait_for(lambda: store.event_stats().get("landed") == 1 and store.event_stats().get("refused") == 1, 30,
                 "the worker to land the good event and refuse the bad one", log=log,
                 process=worker)
        url = f"http://{settings.host}:{settings.events_metrics_port}/metrics"
        text = httpx.get(url, timeout=5).text
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=20)
    samples = [line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")]
    metrics = {name: float(value) for name, value in samples}
    inbox = '{source="inbox"}'
    assert metrics[f"recsys_events_accepted_total{inbox}"] == 1 and metrics[f"recsys_events_refused_total{inbox}"] == 1
    assert metrics[f"recsys_event_accept_lag_seconds_count{inbox}"] == 1 and metrics["recsys_events_applied_total"] == 1
    assert metrics["recsys_event_apply_lag_seconds_count"] == 1
    assert metrics["recsys_landing_parts_total"] == 1 and metrics["recsys_landing_rows_total"] == 1
    # the freshness gauges, read from Redis at scrape time (the same names as the API's)
    assert metrics["recsys_freshness_up"] == 1 and metrics["recsys_freshness_events_backlog"] == 0
    assert metrics["recsys_freshness_events_accepted"] == 1 and metrics["recsys_freshness_events_landed"] == 1
    assert 0 <= metrics["recsys_freshness_online_version_age_seconds"] < 120
    assert 0 <= metrics["recsys_freshness_last_landed_age_seconds"] < 60
    assert any(name.startswith("recsys_freshness_online_version_info{") for name in metrics)
    assert code == 0, log.read_text()[-3000:]
    assert "stopped" in log.read_text()


def test_the_stack_runs_the_worker_as_the_events_service(settings):
    from recsys.stack.events import EventWorkerService

    service = EventWorkerService(settings)
    assert service.embedded and service.url.endswith(f":{settings.events_metrics_port}/metrics")
    try:
        service.up()
        status = service.status()
        assert status["answering"] and status["pid"] and status["log"].endswith("services/events/events.log")
    finally:
        service.down()
    assert not service.answering() and service.status()["pid"] is None
    assert "inbox validator" in (settings.services_root / "events" / "events.log").read_text()
