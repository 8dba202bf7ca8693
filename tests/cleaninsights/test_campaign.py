"""Campaign period arithmetic: the worked examples of the spec, 3.4."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from secure_store.cleaninsights import Campaign, Event, EventAggregationRule
from secure_store.cleaninsights.clock import FrozenClock, use_clock


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


def weekly(strengthen: bool = False) -> Campaign:
    return Campaign(
        "2024-01-01T00:00:00Z",
        "2024-12-31T23:59:59Z",
        7,
        4,
        strengthen_anonymity=strengthen,
    )


def playback(strengthen: bool = False) -> Campaign:
    return Campaign(
        "2024-03-01T00:00:00Z",
        "2024-03-20T12:00:00Z",
        7,
        3,
        event_aggregation_rule="avg",
        strengthen_anonymity=strengthen,
    )


def test_example_a_current_period() -> None:
    period = weekly().measurement_period_at(utc(2024, 1, 17, 10))
    assert period == (utc(2024, 1, 15), utc(2024, 1, 22))
    assert [int(p.timestamp()) for p in period] == [1705276800, 1705881600]


def test_example_a_next_total_period_without_strengthening() -> None:
    window = weekly().total_measurement_period_at(utc(2024, 1, 17, 10))
    assert window == (utc(2024, 1, 15), utc(2024, 2, 12))
    assert [int(p.timestamp()) for p in window] == [1705276800, 1707696000]


def test_example_b_next_total_period_with_strengthening() -> None:
    window = weekly(True).total_measurement_period_at(utc(2024, 1, 17, 10))
    assert window == (utc(2024, 1, 22), utc(2024, 2, 19))
    assert [int(p.timestamp()) for p in window] == [1705881600, 1708300800]


@pytest.mark.parametrize(
    ("now", "current", "plain", "strengthened"),
    [
        (
            utc(2024, 3, 7, 23, 59, 59),
            (utc(2024, 3, 1), utc(2024, 3, 8)),
            (utc(2024, 3, 1), utc(2024, 3, 15)),
            (utc(2024, 3, 8), utc(2024, 3, 15)),
        ),
        (
            utc(2024, 3, 8),
            (utc(2024, 3, 8), utc(2024, 3, 15)),
            (utc(2024, 3, 8), utc(2024, 3, 15)),
            None,
        ),
        (
            utc(2024, 3, 16, 8),
            (utc(2024, 3, 15), utc(2024, 3, 20, 12)),
            None,
            None,
        ),
        (
            utc(2024, 3, 20, 12),
            (utc(2024, 3, 15), utc(2024, 3, 20, 12)),
            None,
            None,
        ),
        (utc(2024, 3, 20, 12, 0, 1), None, None, None),
    ],
    ids=["03-07T23:59:59", "03-08T00:00", "03-16T08:00", "end", "after-end"],
)
def test_example_c_table(
    now: datetime,
    current: tuple[datetime, datetime] | None,
    plain: tuple[datetime, datetime] | None,
    strengthened: tuple[datetime, datetime] | None,
) -> None:
    assert playback().measurement_period_at(now) == current
    assert playback().total_measurement_period_at(now) == plain
    assert playback(True).total_measurement_period_at(now) == strengthened


def test_example_c_truncated_last_period_in_unix_seconds() -> None:
    period = playback().measurement_period_at(utc(2024, 3, 16, 8))
    assert period is not None
    assert [int(p.timestamp()) for p in period] == [1710460800, 1710936000]


def test_example_d_daily_campaign() -> None:
    daily = Campaign("2024-05-01T00:00:00Z", "2024-05-31T00:00:00Z", 1, 3)
    strong = Campaign(
        "2024-05-01T00:00:00Z",
        "2024-05-31T00:00:00Z",
        1,
        3,
        strengthen_anonymity=True,
    )
    now = utc(2024, 5, 10, 15, 30)
    assert daily.measurement_period_at(now) == (
        utc(2024, 5, 10),
        utc(2024, 5, 11),
    )
    assert daily.total_measurement_period_at(now) == (
        utc(2024, 5, 10),
        utc(2024, 5, 13),
    )
    assert strong.total_measurement_period_at(now) == (
        utc(2024, 5, 11),
        utc(2024, 5, 14),
    )


def test_example_d_only_whole_periods_before_end_fit() -> None:
    ten_days = Campaign("2024-05-01T00:00:00Z", "2024-05-31T00:00:00Z", 10, 5)
    assert ten_days.total_measurement_period_at(utc(2024, 5, 2)) == (
        utc(2024, 5, 1),
        utc(2024, 5, 31),
    )


def test_no_period_before_start() -> None:
    assert weekly().measurement_period_at(utc(2023, 12, 31, 23, 59)) is None


def test_start_itself_opens_the_first_period() -> None:
    assert weekly().measurement_period_at(utc(2024, 1, 1)) == (
        utc(2024, 1, 1),
        utc(2024, 1, 8),
    )


def test_periods_are_exact_days_across_a_dst_change() -> None:
    # Europe switched to summer time on 2024-03-31; UTC days do not care.
    daily = Campaign("2024-03-30T00:00:00+01:00", "2024-04-30T00:00:00Z", 1)
    assert daily.measurement_period_at(utc(2024, 4, 1, 12)) == (
        utc(2024, 3, 31, 23),
        utc(2024, 4, 1, 23),
    )


def test_zone_less_instants_are_utc() -> None:
    campaign = Campaign("2024-01-01T00:00:00", "2024-02-01", 7)
    assert campaign.start == utc(2024, 1, 1)
    assert campaign.end == utc(2024, 2, 1)


def test_properties_use_the_clock() -> None:
    with use_clock(FrozenClock(utc(2024, 1, 17, 10))):
        assert weekly().current_measurement_period == (
            utc(2024, 1, 15),
            utc(2024, 1, 22),
        )
        assert weekly(True).next_total_measurement_period == (
            utc(2024, 1, 22),
            utc(2024, 2, 19),
        )


def test_aggregation_period_is_a_timedelta_of_whole_days() -> None:
    assert weekly().aggregation_period.total_seconds() == 7 * 86_400


def test_rule_accepts_js_spellings() -> None:
    assert EventAggregationRule("avg") is EventAggregationRule.Avg
    assert EventAggregationRule("sum") is EventAggregationRule.Sum


def test_apply_sums_values() -> None:
    campaign = weekly()
    event = Event("c", "a", None, 3, "x")
    event.times = 2
    campaign.apply(event, 5)
    assert event.value == 8


def test_apply_without_value_changes_nothing() -> None:
    campaign = playback()
    event = Event("c", "a", None, 4, "x")
    event.times = 2
    campaign.apply(event, None)
    assert event.value == 4
