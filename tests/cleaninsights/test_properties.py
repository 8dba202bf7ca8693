"""Property tests: counts and aggregates as computed directly; round trips."""

from __future__ import annotations

import enum
import json
import math
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

import pytest
from ci_helpers import SERVER, utc
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_store.cleaninsights import (
    CleanInsights,
    Consent,
    Consents,
    Event,
    MemoryStore,
    Visit,
)
from secure_store.cleaninsights.clock import FrozenClock, use_clock

SCENES = [["Main"], ["Main", "Settings"], ["Ünïcödé", "页"]]
EVENT_KEYS = [
    ("music", "play", None),
    ("music", "play", "track"),
    ("v", "w", "x"),
]
PERIOD_START = utc(2024, 1, 15)
PERIOD_S = 7 * 86_400

values = st.one_of(
    st.none(),
    st.integers(-10_000, 10_000),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)
measurement = st.tuples(
    st.sampled_from(["visit", "event"]),
    st.integers(0, 2),
    values,
    st.integers(0, PERIOD_S - 1),
)


def campaign_conf(rule: str, once: bool) -> dict[str, object]:
    return {
        "server": SERVER,
        "siteId": 1,
        "persistEveryNTimes": 1000,
        "serverSideAnonymousUsage": True,
        "campaigns": {
            "c": {
                "start": "2024-01-01T00:00:00Z",
                "end": "2024-12-31T00:00:00Z",
                "aggregationPeriodLength": 7,
                "onlyRecordOnce": once,
                "eventAggregationRule": rule,
            }
        },
    }


def run(
    measurements: list[tuple[str, int, float | None, int]],
    rule: str,
    once: bool,
) -> tuple[MemoryStore, dict[str, Any]]:
    clock = FrozenClock(PERIOD_START)
    store = MemoryStore()
    with use_clock(clock):
        ci = CleanInsights(campaign_conf(rule, once), store, languages=[])
        for kind, index, value, offset_s in sorted(
            measurements, key=lambda m: m[3]
        ):
            clock.set(PERIOD_START + timedelta(seconds=offset_s))
            if kind == "visit":
                ci.measure_visit(SCENES[index], "c")
            else:
                category, action, name = EVENT_KEYS[index]
                ci.measure_event(category, action, "c", name, value)
        clock.set(PERIOD_START + timedelta(seconds=PERIOD_S, milliseconds=1))
        ci.persist_and_send()
    body = json.loads(store.sent[0]) if store.sent else {}
    return store, body


@settings(max_examples=60, deadline=None)
@given(st.lists(measurement, max_size=40), st.booleans())
def test_times_per_scene_and_event_equal_the_measurements(
    measurements: list[tuple[str, int, float | None, int]], once: bool
) -> None:
    _, body = run(measurements, "sum", once)
    expected_visits = Counter(
        "/".join(SCENES[i])
        for kind, i, _, _ in measurements
        if kind == "visit"
    )
    expected_events = Counter(
        EVENT_KEYS[i] for kind, i, _, _ in measurements if kind == "event"
    )
    if once:
        expected_visits = Counter(dict.fromkeys(expected_visits, 1))
        expected_events = Counter(dict.fromkeys(expected_events, 1))
    sent_visits = {
        v["action_name"]: v["times"] for v in body.get("visits", [])
    }
    sent_events = {
        (e["category"], e["action"], e.get("name")): e["times"]
        for e in body.get("events", [])
    }
    assert sent_visits == dict(expected_visits)
    assert sent_events == dict(expected_events)


@settings(max_examples=60, deadline=None)
@given(st.lists(measurement, max_size=40))
def test_sum_is_the_sum_of_the_values(
    measurements: list[tuple[str, int, float | None, int]],
) -> None:
    _, body = run(measurements, "sum", False)
    by_key: dict[tuple[str, str, str | None], list[float]] = defaultdict(list)
    for kind, i, value, _ in measurements:
        if kind == "event" and value is not None:
            by_key[EVENT_KEYS[i]].append(value)
    for event in body.get("events", []):
        key = (event["category"], event["action"], event.get("name"))
        if not by_key[key]:
            assert "value" not in event
        else:
            assert event["value"] == pytest.approx(
                math.fsum(by_key[key]), rel=1e-9, abs=1e-6
            )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),
            st.one_of(
                st.integers(-10_000, 10_000),
                st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
            ),
            st.integers(0, PERIOD_S - 1),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_avg_of_values_is_their_mean(
    measurements: list[tuple[int, float, int]],
) -> None:
    _, body = run(
        [("event", i, value, offset) for i, value, offset in measurements],
        "avg",
        False,
    )
    by_key: dict[tuple[str, str, str | None], list[float]] = defaultdict(list)
    for i, value, _ in measurements:
        by_key[EVENT_KEYS[i]].append(value)
    sent = {
        (e["category"], e["action"], e.get("name")): e["value"]
        for e in body["events"]
    }
    assert set(sent) == set(by_key)
    for key, seen in by_key.items():
        assert sent[key] == pytest.approx(
            math.fsum(seen) / len(seen), rel=1e-9, abs=1e-6
        )


instants = st.integers(0, 4_102_444_800_000).map(
    lambda ms: utc(1970, 1, 1) + timedelta(milliseconds=ms)
)
texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
visits = st.builds(
    Visit,
    st.lists(texts, max_size=4),
    texts,
    st.integers(1, 10**9),
    instants,
    instants,
)
events = st.builds(
    Event,
    texts,
    texts,
    st.none() | texts,
    st.none()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False),
    texts,
    st.integers(1, 10**9),
    instants,
    instants,
)
consents = st.builds(
    Consents,
    st.dictionaries(
        st.sampled_from(["lang", "ua"]),
        st.builds(Consent, st.booleans(), instants, instants),
    ),
    st.dictionaries(
        texts, st.builds(Consent, st.booleans(), instants, instants)
    ),
)


@settings(max_examples=100, deadline=None)
@given(consents, st.lists(visits, max_size=5), st.lists(events, max_size=5))
def test_store_round_trips_through_its_json_unchanged(
    stored_consents: Consents,
    stored_visits: list[Visit],
    stored_events: list[Event],
) -> None:
    store = MemoryStore(
        data={
            "consents": stored_consents,
            "visits": stored_visits,
            "events": stored_events,
        }
    )
    text = store.to_json()
    again = MemoryStore(data=json.loads(text))
    assert again.to_json() == text
    assert again.consents == store.consents
    assert again.visits == store.visits
    assert again.events == store.events


class Level(enum.IntEnum):
    """An int subclass, which json.dumps writes in its own way."""

    one = 1


odd_numbers = (
    st.integers()
    | st.floats()
    | st.booleans()
    | st.none()
    | st.just(Level.one)
)


@settings(max_examples=150, deadline=None)
@given(
    consents,
    st.lists(
        st.builds(
            Visit,
            st.lists(texts, max_size=3),
            texts,
            st.integers(-(10**20), 10**20) | st.booleans(),
            instants,
            instants,
        ),
        max_size=4,
    ),
    st.lists(
        st.builds(
            Event,
            texts,
            texts,
            st.none() | texts,
            odd_numbers,
            texts,
            st.integers() | st.booleans(),
            instants,
            instants,
        ),
        max_size=4,
    ),
)
def test_to_json_is_json_dumps_of_to_dict(
    stored_consents: Consents,
    stored_visits: list[Visit],
    stored_events: list[Event],
) -> None:
    store = MemoryStore()
    store.consents = stored_consents
    store.visits = stored_visits
    store.events = stored_events
    assert store.to_json() == json.dumps(
        store.to_dict(), separators=(",", ":"), ensure_ascii=False
    )


existing_visit = st.builds(
    lambda path, campaign, first_h, length_h, times: Visit(
        path,
        campaign,
        times,
        PERIOD_START + timedelta(hours=first_h),
        PERIOD_START + timedelta(hours=first_h + length_h),
    ),
    st.sampled_from([["Main"], ["Main", "Settings"], ["Main/Settings"]]),
    st.sampled_from(["c", "other"]),
    st.integers(-200, 200),
    st.integers(0, 200),
    st.integers(1, 5),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(existing_visit, max_size=8),
    st.sampled_from([["Main"], ["Main", "Settings"]]),
)
def test_measurement_updates_the_first_match_in_list_order(
    stored: list[Visit], path: list[str]
) -> None:
    # The reference's linear search, written out: same campaign, same
    # joined path, first and last inside the current period.
    period_end = PERIOD_START + timedelta(days=7)
    expected_index = next(
        (
            i
            for i, v in enumerate(stored)
            if v.campaign_id == "c"
            and "/".join(v.scene_path) == "/".join(path)
            and PERIOD_START <= v.first <= period_end
            and PERIOD_START <= v.last <= period_end
        ),
        None,
    )
    before = [v.times for v in stored]
    clock = FrozenClock(PERIOD_START + timedelta(hours=1))
    # Points whose period is over are offered to the server, which
    # refuses them, so they stay where they are.
    store = MemoryStore(data={"visits": stored}, transport=_refuse)
    conf = campaign_conf("sum", False)
    conf["maxAgeOfOldData"] = 1000
    with use_clock(clock):
        ci = CleanInsights(conf, store, languages=[])
        ci.measure_visit(path, "c")
    after = [v.times for v in store.visits[: len(before)]]
    if expected_index is None:
        assert after == before
        assert len(store.visits) == len(before) + 1
    else:
        before[expected_index] += 1
        assert after == before
        assert len(store.visits) == len(before)


def _refuse(data: str, server: str, timeout: float) -> None:
    raise ConnectionRefusedError("no server in this test")
