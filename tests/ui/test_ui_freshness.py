"""The page's Freshness panel: the figures of recsys.events.freshness, read from the real Redis and
rendered by the page's real template (a key prefix of this test's own on the session's Redis)."""

from __future__ import annotations

import re
import time
import uuid

import numpy as np
import pandas as pd
import pytest

from recsys.settings import replace


@pytest.fixture()
def own(stack_settings, tmp_path):
    s = replace(stack_settings, home=tmp_path / "home", online_key_prefix=f"ui-fresh-{uuid.uuid4().hex[:8]}")
    yield s
    from recsys.online.redis_store import RedisOnlineStore

    store = RedisOnlineStore.from_settings(s)
    for key in store.client.scan_iter(match=f"{{{s.online_key_prefix}}}:*"):
        store.client.delete(key)
    store.client.close()


def render(settings) -> str:
    from recsys.ui.app import templates
    from recsys.ui.overview import TRIGGERABLE_DAGS, gather

    return templates.get_template("overview.html").render(
        user="u", sections=gather(settings), dags=TRIGGERABLE_DAGS, triggered=None, run_id=None, error=None
    )


def shown(html: str, figure: str) -> str:
    found = re.search(rf'<tr id="freshness-{figure}">.*?<td class="figure">(.*?)</td>', html)
    assert found, f"no row {figure} in the Freshness panel"
    return found.group(1)


def test_the_freshness_panel_shows_the_figures_of_freshness(own):
    from recsys.events.freshness import FIELDS, freshness
    from recsys.events.validation import EventRules, validate_events
    from recsys.online.redis_store import RedisOnlineStore
    from recsys.online.snapshot import snapshot_from_frames
    from recsys.ui.overview import freshness_section

    empty = freshness_section(own)
    assert [row["name"] for row in empty["rows"]] == list(FIELDS)
    html = render(own)
    assert shown(html, "events_accepted") == "0" and shown(html, "last_event_age_seconds") == "never"
    assert shown(html, "online_version") == "none"

    encoded = np.arange(3, 6, dtype=np.int64)
    snapshot = snapshot_from_frames(
        "fv-fresh", "dv-fresh",
        pd.DataFrame({"user_id": encoded, "segment": encoded}), np.array([11, 12, 13]),
        pd.DataFrame({"item_id": encoded, "price": np.ones(3, np.float32)}), np.array([21, 22, 23]),
        pd.DataFrame({"user_id": [11, 12], "item_id": [21, 22], "label": np.ones(2, np.int8)}),
        pd.DataFrame({"item_id": [21, 22, 23], "title": ["a", "b", "c"]}),
    )
    store = RedisOnlineStore.from_settings(own)
    try:
        version = store.refresh(snapshot).version
        events = [{"user_id": 11, "item_id": item, "event_type": "view", "timestamp": time.time()} for item in (21, 22, 23)]
        store.accept_events(validate_events(events, EventRules.from_store(store, own)))
        figures = freshness(store)
    finally:
        store.client.close()
    section = freshness_section(own)
    assert section["figures"]["events_accepted"] == figures["events_accepted"] == 3
    assert section["figures"]["events_backlog"] == 3 and section["figures"]["online_version"] == version

    html = render(own)
    assert shown(html, "events_accepted") == "3" and shown(html, "events_backlog") == "3"
    assert shown(html, "events_landed") == "0" and shown(html, "last_landed_age_seconds") == "never"
    assert shown(html, "online_version") == version
    assert re.fullmatch(r"\d+ s", shown(html, "last_event_age_seconds"))
    assert re.fullmatch(r"\d+ s", shown(html, "online_version_age_seconds"))
    assert FIELDS["events_backlog"] in html  # each figure's meaning beside it
