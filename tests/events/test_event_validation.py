"""Event validation: every rule, every problem reported with the event's index (pure: no services)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data import ids
from recsys.events.validation import EventRules, EventsRefused, validate_events

NOW = 1_765_000_000.0
ISO_NOW = "2025-12-06T05:46:40Z"  # NOW as text


def rules(**overrides) -> EventRules:
    catalogue = np.array([10, 11, 12], dtype=np.int64)
    values = dict(
        id_kinds=ids.IdKinds(),
        event_types=("view", "purchase"),
        max_age_seconds=3600,
        max_future_seconds=60,
        max_batch=5,
        known_items=lambda values: np.isin(values, catalogue),
        catalogue="online version v-1",
    )
    values.update(overrides)
    return EventRules(**values)


def event(**fields):
    base = {"user_id": 7, "item_id": 10, "event_type": "view", "timestamp": NOW}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def problems(raw, r=None) -> list[tuple[int, str, str]]:
    with pytest.raises(EventsRefused) as caught:
        validate_events(raw, r or rules(), now=NOW)
    return [(p.index, p.field, p.reason) for p in caught.value.problems]


def test_a_valid_batch_comes_back_as_columns():
    batch = validate_events(
        [event(), event(user_id="8", item_id=11.0, event_type="purchase", timestamp=ISO_NOW, request_id="r-1"),
         event(timestamp=int(NOW * 1000) - 5)],
        rules(), now=NOW,
    )
    assert batch.user_ids == ["7", "8", "7"] and batch.item_ids == ["10", "11", "10"]
    assert batch.event_types == ["view", "purchase", "view"]
    assert batch.timestamps_ms == [int(NOW * 1000), int(NOW * 1000), int(NOW * 1000) - 5]  # s, ISO and ms agree
    assert batch.request_ids == ["", "r-1", ""] and batch.id_kinds == ids.IdKinds()


def test_every_problem_is_reported_with_its_index_and_nothing_passes():
    found = problems([
        event(),                                   # 0: fine
        event(user_id="abc"),                      # 1: not an integer id
        event(item_id=99),                         # 2: not in the catalogue
        event(event_type="like"),                  # 3: unknown type
        event(timestamp=NOW - 7200),               # 4: too old
        event(timestamp=NOW + 3600, user_id=-1),   # 5: two problems
        event(event_type="buy", item_id=98),       # 6: two problems, one of them the catalogue's
    ], rules(max_batch=10))
    by_index = {}
    for index, field, reason in found:
        by_index.setdefault(index, []).append((field, reason))
    assert 0 not in by_index
    assert by_index[1][0][0] == "user_id" and "'abc' is not an integer id" in by_index[1][0][1]
    assert by_index[2] == [("item_id", "99 is not in the served catalogue (online version v-1)")]
    assert by_index[3][0][0] == "event_type" and "'like' is not one of view, purchase" in by_index[3][0][1]
    assert by_index[4][0][0] == "timestamp" and "older than" in by_index[4][0][1]
    assert sorted(f for f, _ in by_index[5]) == ["timestamp", "user_id"]
    assert "in the future" in dict(by_index[5])["timestamp"] and "negative" in dict(by_index[5])["user_id"]
    assert sorted(f for f, _ in by_index[6]) == ["event_type", "item_id"]


@pytest.mark.parametrize(
    "raw, field, words",
    [
        ([event(user_id=None)], "user_id", "missing"),
        ([event(timestamp="yesterday")], "timestamp", "not ISO-8601"),
        ([event(timestamp=True)], "timestamp", "neither ISO-8601"),
        ([event(timestamp=float("nan"))], "timestamp", "not a finite number"),
        ([event(request_id="x" * 200)], "request_id", "printable"),
        ([{**event(), "userId": 7}], "userId", "unknown field"),
        (["not an object"], "event", "must be a JSON object"),
    ],
)
def test_single_rules(raw, field, words):
    (index, got_field, reason), = problems(raw)
    assert index == 0 and got_field == field and words in reason


def test_batch_level_problems():
    assert problems([])[0][1:] == ("events", "the batch is empty")
    assert "at most 5" in problems([event()] * 6)[0][2]
    assert "must be a list" in problems({"user_id": 1})[0][2]


def test_text_id_deployments_keep_ids_as_written():
    text = rules(id_kinds=ids.IdKinds(ids.STRING, ids.STRING), known_items=lambda v: np.isin(v, np.array(["SKU-1"], dtype=object)))
    batch = validate_events([event(user_id="u-001", item_id="SKU-1")], text, now=NOW)
    assert batch.user_ids == ["u-001"] and batch.item_ids == ["SKU-1"] and batch.id_kinds.to_code() == "ss"
    assert problems([event(user_id=" u-1", item_id="SKU-1")], text)[0][1] == "user_id"


def test_the_message_names_the_first_problems():
    with pytest.raises(EventsRefused, match=r"2 of 3 event\(s\) refused; nothing was applied") as caught:
        validate_events([event(), event(item_id=99), event(event_type="x")], rules(), now=NOW)
    assert "event 1: item_id" in str(caught.value) and "event 2: event_type" in str(caught.value)
