"""Measuring: the gate, merging into data points, aggregation (spec 3.5, 5)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from ci_helpers import MakeCi, utc

from secure_store.cleaninsights import Event, Visit
from secure_store.cleaninsights.clock import FrozenClock

GRANTED = "weekly-screens"


def campaign(**extra: object) -> dict[str, object]:
    return {
        "start": "2024-01-01T00:00:00Z",
        "end": "2024-12-31T23:59:59Z",
        "aggregationPeriodLength": 7,
        "numberOfPeriods": 4,
        **extra,
    }


def test_visit_gets_the_period_bounds_and_counts(make_ci: MakeCi) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    for _ in range(3):
        ci.measure_visit(["Main", "Settings"], GRANTED)
    assert store.visits == [
        Visit(
            ["Main", "Settings"],
            GRANTED,
            3,
            utc(2024, 1, 15),
            utc(2024, 1, 22),
        )
    ]


def test_visits_to_different_scenes_are_separate(make_ci: MakeCi) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    ci.measure_visit(["Main"], GRANTED)
    ci.measure_visit(["Main", "Settings"], GRANTED)
    ci.measure_visit(["Main"], GRANTED)
    assert [(v.action_name, v.times) for v in store.visits] == [
        ("Main", 2),
        ("Main/Settings", 1),
    ]


def test_scene_paths_merge_by_joined_name(make_ci: MakeCi) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    ci.measure_visit(["a/b"], GRANTED)
    ci.measure_visit(["a", "b"], GRANTED)
    assert len(store.visits) == 1
    assert store.visits[0].times == 2


def test_new_period_makes_a_new_point(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    ci.measure_visit(["Main"], GRANTED)
    clock.set(utc(2024, 1, 22))
    ci.measure_visit(["Main"], GRANTED)
    assert [(v.first, v.last, v.times) for v in store.visits] == [
        (utc(2024, 1, 15), utc(2024, 1, 22), 1),
        (utc(2024, 1, 22), utc(2024, 1, 29), 1),
    ]


def test_first_matching_point_in_list_order_is_updated(
    make_ci: MakeCi,
) -> None:
    ci, store = make_ci()
    store.visits.append(
        Visit(["Main"], GRANTED, 5, utc(2024, 1, 16), utc(2024, 1, 21))
    )
    store.visits.append(
        Visit(["Main"], GRANTED, 1, utc(2024, 1, 15), utc(2024, 1, 22))
    )
    ci.grant_campaign(GRANTED)
    ci.measure_visit(["Main"], GRANTED)
    assert [v.times for v in store.visits] == [6, 1]


def test_point_outside_the_period_is_not_matched(make_ci: MakeCi) -> None:
    ci, store = make_ci()
    store.visits.append(
        Visit(["Main"], GRANTED, 5, utc(2024, 1, 22), utc(2024, 1, 29))
    )
    ci.grant_campaign(GRANTED)
    ci.measure_visit(["Main"], GRANTED)
    assert [v.times for v in store.visits] == [5, 1]


def test_points_appended_behind_the_sdks_back_are_found(
    make_ci: MakeCi,
) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    ci.measure_visit(["Main"], GRANTED)
    store.visits.insert(
        0, Visit(["Other"], GRANTED, 1, utc(2024, 1, 15), utc(2024, 1, 22))
    )
    ci.measure_visit(["Other"], GRANTED)
    assert [(v.action_name, v.times) for v in store.visits] == [
        ("Other", 2),
        ("Main", 1),
    ]


def test_replaced_store_lists_are_followed(make_ci: MakeCi) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    ci.measure_visit(["Main"], GRANTED)
    store.visits = [
        Visit(["Main"], GRANTED, 9, utc(2024, 1, 15), utc(2024, 1, 22))
    ]
    ci.measure_visit(["Main"], GRANTED)
    assert [v.times for v in store.visits] == [10]


def test_events_key_on_category_action_and_name(make_ci: MakeCi) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    ci.measure_event("music", "play", GRANTED, "track", 1)
    ci.measure_event("music", "play", GRANTED, None, 1)
    ci.measure_event("music", "play", GRANTED, "track", 2)
    ci.measure_event("music", "stop", GRANTED)
    assert [(e.name, e.action, e.times, e.value) for e in store.events] == [
        ("track", "play", 2, 3),
        (None, "play", 1, 1),
        (None, "stop", 1, None),
    ]


@pytest.mark.parametrize(
    ("rule", "values", "times", "value"),
    [
        ("sum", [3, 5, None, 2], 4, 10),
        ("avg", [2, 4, 9], 3, 5.0),
        ("avg", [4, None, 10], 3, 6.0),
        ("avg", [None, 6, 9], 3, 5.0),
    ],
)
def test_aggregation_table(
    make_ci: MakeCi,
    rule: str,
    values: list[float | None],
    times: int,
    value: float,
) -> None:
    ci, store = make_ci(campaigns={"c": campaign(eventAggregationRule=rule)})
    ci.grant_campaign("c")
    for v in values:
        ci.measure_event("media", "watch", "c", "clip", v)
    assert [(e.times, e.value) for e in store.events] == [(times, value)]


@pytest.mark.parametrize("rule", ["sum", "avg"])
def test_value_that_would_overflow_the_aggregate_is_discarded(
    make_ci: MakeCi, rule: str
) -> None:
    ci, store = make_ci(campaigns={"c": campaign(eventAggregationRule=rule)})
    ci.grant_campaign("c")
    ci.measure_event("media", "watch", "c", "clip", 1e308)
    ci.measure_event("media", "watch", "c", "clip", 1e308)
    assert [(e.times, e.value) for e in store.events] == [(1, 1e308)]


@pytest.mark.parametrize("rule", ["sum", "avg"])
def test_only_record_once_keeps_the_first(make_ci: MakeCi, rule: str) -> None:
    ci, store = make_ci(
        campaigns={
            "c": campaign(eventAggregationRule=rule, onlyRecordOnce=True)
        }
    )
    ci.grant_campaign("c")
    for v in (4, 8, 1):
        ci.measure_event("media", "watch", "c", "clip", v)
        ci.measure_visit(["Main"], "c")
    assert [(e.times, e.value) for e in store.events] == [(1, 4)]
    assert [v.times for v in store.visits] == [1]


def test_unknown_campaign_is_discarded_with_a_debug_message(
    make_ci: MakeCi,
) -> None:
    messages: list[str] = []
    from secure_store.cleaninsights import MemoryStore

    ci, store = make_ci(store=MemoryStore(debug=messages.append), debug=True)
    ci.measure_visit(["Main"], "nope")
    assert store.visits == []
    assert (
        "Measurement discarded: campaign 'nope' is not configured." in messages
    )


def test_measurement_without_consent_is_discarded(make_ci: MakeCi) -> None:
    ci, store = make_ci()
    ci.measure_visit(["Main"], GRANTED)
    ci.measure_event("a", "b", GRANTED)
    assert (store.visits, store.events) == ([], [])


def test_measurement_after_denial_is_discarded(make_ci: MakeCi) -> None:
    ci, store = make_ci()
    ci.deny_campaign(GRANTED)
    ci.measure_visit(["Main"], GRANTED)
    assert store.visits == []


def test_measurement_before_start_is_discarded(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, store = make_ci(serverSideAnonymousUsage=True)
    clock.set(utc(2023, 12, 31, 23, 59, 59))
    ci.measure_visit(["Main"], GRANTED)
    assert store.visits == []


def test_measurement_after_end_is_discarded(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, store = make_ci(serverSideAnonymousUsage=True)
    clock.set(utc(2025, 1, 1))
    ci.measure_visit(["Main"], GRANTED)
    assert store.visits == []


def test_measurement_at_end_is_discarded_without_anonymous_usage(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    clock.set(utc(2024, 12, 31, 23, 59, 59))
    ci.measure_visit(["Main"], GRANTED)
    assert store.visits == []


def test_measurement_at_end_counts_with_anonymous_usage(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, store = make_ci(serverSideAnonymousUsage=True)
    clock.set(utc(2024, 12, 31, 23, 59, 59))
    ci.measure_visit(["Main"], GRANTED)
    assert [(v.first, v.last) for v in store.visits] == [
        (utc(2024, 12, 30), utc(2024, 12, 31, 23, 59, 59))
    ]


def test_consent_expiry_stops_recording(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    clock.set(utc(2024, 2, 12) + timedelta(seconds=1))
    ci.measure_visit(["Main"], GRANTED)
    assert store.visits == []


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), "5", True], ids=repr
)
def test_event_with_a_bad_value_is_discarded(
    make_ci: MakeCi, value: object
) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    ci.measure_event("a", "b", GRANTED, None, value)  # type: ignore[arg-type]
    assert store.events == []


def test_scene_path_given_as_a_string_is_discarded(make_ci: MakeCi) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    ci.measure_visit("Main", GRANTED)
    assert store.visits == []


def test_text_that_cannot_be_utf8_is_discarded(make_ci: MakeCi) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    ci.measure_visit(["bad\ud800"], GRANTED)
    ci.measure_event("bad\udfff", "x", GRANTED)
    assert (store.visits, store.events) == ([], [])


def test_non_ascii_names_are_kept(make_ci: MakeCi) -> None:
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    ci.measure_visit(["Übersicht", "設定"], GRANTED)
    assert store.visits[0].scene_path == ["Übersicht", "設定"]


def test_point_recorded_right_after_consent_starts_at_period_start(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    clock.set(utc(2024, 1, 21, 23))
    ci, store = make_ci()
    ci.grant_campaign(GRANTED)
    ci.measure_event("a", "b", GRANTED)
    assert store.events == [
        Event(
            "a",
            "b",
            None,
            None,
            GRANTED,
            1,
            utc(2024, 1, 15),
            utc(2024, 1, 22),
        )
    ]
