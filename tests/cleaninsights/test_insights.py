"""The CIMP payload: wire shape, lang/ua gating, selection, purge, clean."""

from __future__ import annotations

import json
from datetime import timedelta

from ci_helpers import SERVER, utc

from secure_store.cleaninsights import (
    Configuration,
    Event,
    Feature,
    Insights,
    MemoryStore,
    Visit,
)
from secure_store.cleaninsights.clock import FrozenClock

PERIOD = (utc(2024, 1, 15), utc(2024, 1, 22))
AFTER = utc(2024, 1, 22, 0, 0, 1)


def conf(**extra: object) -> Configuration:
    return Configuration.from_dict(
        {
            "server": SERVER,
            "siteId": 7,
            "campaigns": {
                "weekly-screens": {
                    "start": "2024-01-01T00:00:00Z",
                    "end": "2024-12-31T23:59:59Z",
                    "aggregationPeriodLength": 7,
                }
            },
            **extra,
        }
    )


def spec_store() -> MemoryStore:
    store = MemoryStore()
    store.visits.append(
        Visit(["Main", "Settings"], "weekly-screens", 3, *PERIOD)
    )
    store.events.append(
        Event("music", "play", "track", 12.5, "weekly-screens", 2, *PERIOD)
    )
    return store


def test_spec_example_body_byte_for_byte() -> None:
    store = spec_store()
    store.consents.grant_feature(Feature.lang, utc(2024, 1, 17))
    insights = Insights(conf(), store, "de-AT;q=1,de;q=0.9", "x", now=AFTER)
    assert insights.to_json() == (
        '{"idsite":7,"lang":"de-AT;q=1,de;q=0.9","visits":[{"action_name":'
        '"Main/Settings","period_start":1705276800,"period_end":1705881600,'
        '"times":3}],"events":[{"category":"music","action":"play","name":'
        '"track","value":12.5,"period_start":1705276800,"period_end":'
        '1705881600,"times":2}]}'
    )


def test_absent_name_and_value_are_omitted() -> None:
    store = MemoryStore()
    store.events.append(
        Event("app", "start", None, None, "weekly-screens", 1, *PERIOD)
    )
    body = json.loads(Insights(conf(), store, now=AFTER).to_json())
    assert body["events"] == [
        {
            "category": "app",
            "action": "start",
            "period_start": 1705276800,
            "period_end": 1705881600,
            "times": 1,
        }
    ]


def test_lang_and_ua_need_their_feature_granted() -> None:
    store = spec_store()
    body = Insights(conf(), store, "de;q=1", "agent", now=AFTER).to_dict()
    assert "lang" not in body and "ua" not in body

    store.consents.grant_feature(Feature.ua, AFTER)
    store.consents.deny_feature(Feature.lang, AFTER)
    body = Insights(conf(), store, "de;q=1", "agent", now=AFTER).to_dict()
    assert (body.get("lang"), body.get("ua")) == (None, "agent")


def test_anonymous_usage_never_sends_lang_or_ua() -> None:
    store = spec_store()
    store.consents.grant_feature(Feature.ua, AFTER)
    store.consents.grant_feature(Feature.lang, AFTER)
    body = Insights(
        conf(serverSideAnonymousUsage=True), store, "de;q=1", "ua", now=AFTER
    ).to_dict()
    assert list(body) == ["idsite", "visits", "events"]


def test_unfinished_period_is_not_selected() -> None:
    insights = Insights(conf(), spec_store(), now=utc(2024, 1, 22))
    assert insights.is_empty


def test_points_of_unconfigured_campaigns_stay_unsent() -> None:
    store = spec_store()
    store.visits.append(Visit(["Gone"], "old-campaign", 1, *PERIOD))
    insights = Insights(conf(), store, now=AFTER)
    assert [v.action_name for v in insights.visits] == ["Main/Settings"]
    assert len(store.visits) == 2


def test_purge_removes_points_older_than_max_age() -> None:
    store = spec_store()
    store.visits.append(
        Visit(["Old"], "old-campaign", 1, utc(2023, 9, 1), utc(2023, 9, 8))
    )
    # 100 days before 2023-12-17 is 2023-09-08: that point's last is not
    # older than the limit yet.
    Insights(conf(), store, now=utc(2023, 12, 17))
    assert len(store.visits) == 2
    Insights(conf(), store, now=utc(2023, 12, 17) + timedelta(seconds=1))
    assert [v.action_name for v in store.visits] == ["Main/Settings"]


def test_purge_uses_max_age_of_old_data_in_days() -> None:
    store = spec_store()
    Insights(conf(maxAgeOfOldData=1), store, now=utc(2024, 1, 23, 0, 0, 1))
    assert (store.visits, store.events) == ([], [])


def test_clean_removes_exactly_the_sent_objects() -> None:
    store = spec_store()
    twin = Visit(["Main", "Settings"], "old-campaign", 3, *PERIOD)
    store.visits.append(twin)
    insights = Insights(conf(), store, now=AFTER)
    insights.clean(store)
    assert store.visits == [twin]
    assert store.events == []


def test_clean_keeps_a_point_that_changed_since_it_was_sent() -> None:
    store = spec_store()
    insights = Insights(conf(), store, now=AFTER)
    store.visits[0].times += 1
    store.events[0].value = 99
    insights.clean(store)
    assert [v.times for v in store.visits] == [4]
    assert [e.value for e in store.events] == [99]


def test_insights_use_the_clock_by_default(clock: FrozenClock) -> None:
    clock.set(AFTER)
    assert not Insights(conf(), spec_store()).is_empty
