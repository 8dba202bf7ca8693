"""A measurement campaign and the arithmetic of its periods.

Periods are exactly ``aggregation_period_length`` x 86,400 s long, counted
on UTC-aware datetimes from the campaign's ``start`` (never from the
consent, never in local wall-clock time, so DST changes nothing). Period
``k`` is ``[start + k*P, start + (k+1)*P)``, except the last, which is cut at
``end`` and includes it. An instant exactly on a boundary belongs to the
later period.

The total measurement period a consent covers is up to
``number_of_periods`` *whole* periods ending no later than ``end``; without
``strengthen_anonymity`` the current period is the first of them, with it
the window starts at the end of the current period. (Older reference docs
say the window always starts with the next period; the reference code
since 2.5.0 does so only with ``strengthen_anonymity``, and so do we.)

Kept from the reference and documented: with the ``avg`` rule a
measurement without a value still counts as one of the ``times``, so the
stored value is the running average with such measurements weighed as
the average so far, and a first measurement without a value counts as 0.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from . import clock
from ._instants import format_instant, parse_instant, to_utc
from .datapoints import is_number

if TYPE_CHECKING:
    from .datapoints import Event, Number

Period = tuple[datetime, datetime]

SECONDS_PER_DAY = 86_400
# timedelta cannot hold more days than this.
MAX_PERIOD_DAYS = 999_999_999


class EventAggregationRule(enum.Enum):
    """How the values of merged events combine."""

    sum = "sum"
    avg = "avg"
    # The JS/Rust spellings, as aliases of the members above.
    Sum = "sum"
    Avg = "avg"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _instant(value: object, key: str) -> datetime:
    if isinstance(value, datetime):
        return to_utc(value)
    if value is None:
        raise ConfigurationError(f"{key} is missing")
    if not isinstance(value, str):
        raise ConfigurationError(f"{key} must be an ISO-8601 date and time")
    try:
        return parse_instant(value)
    except ValueError:
        raise ConfigurationError(
            f"{key} is not an ISO-8601 date and time: {value!r}"
        ) from None


class Campaign:
    """One campaign: when it runs, how it aggregates, what consent covers.

    Invalid values raise :class:`ConfigurationError` naming the JSON key,
    e.g. ``end is before start`` (inside a configuration the key is
    prefixed, ``campaigns.<id>.end is before start``). Zone-less instants
    are read as UTC.
    """

    def __init__(
        self,
        start: datetime | str,
        end: datetime | str,
        aggregation_period_length: int,
        number_of_periods: int = 1,
        only_record_once: bool = False,
        event_aggregation_rule: EventAggregationRule | str = (
            EventAggregationRule.sum
        ),
        strengthen_anonymity: bool = False,
        *,
        _where: str = "",
    ) -> None:
        w = _where
        self.start = _instant(start, f"{w}start")
        self.end = _instant(end, f"{w}end")
        if self.end < self.start:
            raise ConfigurationError(f"{w}end is before start")
        if not _is_int(aggregation_period_length) or not (
            1 <= aggregation_period_length <= MAX_PERIOD_DAYS
        ):
            raise ConfigurationError(
                f"{w}aggregationPeriodLength must be a whole number of "
                f"days >= 1, not {aggregation_period_length!r}"
            )
        if not _is_int(number_of_periods) or number_of_periods < 1:
            raise ConfigurationError(
                f"{w}numberOfPeriods must be an integer >= 1, "
                f"not {number_of_periods!r}"
            )
        for key, flag in (
            ("onlyRecordOnce", only_record_once),
            ("strengthenAnonymity", strengthen_anonymity),
        ):
            if not isinstance(flag, bool):
                raise ConfigurationError(
                    f"{w}{key} must be true or false, not {flag!r}"
                )
        try:
            rule = EventAggregationRule(event_aggregation_rule)
        except ValueError:
            raise ConfigurationError(
                f'{w}eventAggregationRule must be "sum" or "avg", '
                f"not {event_aggregation_rule!r}"
            ) from None
        self.aggregation_period_length: int = aggregation_period_length
        self.number_of_periods: int = number_of_periods
        self.only_record_once: bool = only_record_once
        self.event_aggregation_rule = rule
        self.strengthen_anonymity: bool = strengthen_anonymity
        self._last_period: tuple[int, Period] | None = None

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, where: str = ""
    ) -> Campaign:
        """Build a campaign from its configuration JSON object.

        ``where`` prefixes the keys named in error messages.
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"{where.rstrip('.')} must be an object")
        if "aggregationPeriodLength" not in data:
            raise ConfigurationError(
                f"{where}aggregationPeriodLength is missing"
            )
        return cls(
            data.get("start"),  # type: ignore[arg-type]  # checked inside
            data.get("end"),  # type: ignore[arg-type]
            data["aggregationPeriodLength"],
            data.get("numberOfPeriods", 1),
            data.get("onlyRecordOnce", False),
            data.get("eventAggregationRule", "sum"),
            data.get("strengthenAnonymity", False),
            _where=where,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the campaign as configuration JSON."""
        return {
            "start": format_instant(self.start),
            "end": format_instant(self.end),
            "aggregationPeriodLength": self.aggregation_period_length,
            "numberOfPeriods": self.number_of_periods,
            "onlyRecordOnce": self.only_record_once,
            "eventAggregationRule": self.event_aggregation_rule.value,
            "strengthenAnonymity": self.strengthen_anonymity,
        }

    @property
    def aggregation_period(self) -> timedelta:
        """The length of one period."""
        return timedelta(days=self.aggregation_period_length)

    # -- periods ---------------------------------------------------------

    @property
    def current_measurement_period(self) -> Period | None:
        """The period running now, or None (see :meth:`period_at`)."""
        return self.measurement_period_at(clock.now())

    @property
    def next_total_measurement_period(self) -> Period | None:
        """The window a consent given now covers, or None."""
        return self.total_measurement_period_at(clock.now())

    def measurement_period_at(self, instant: datetime) -> Period | None:
        """The period containing ``instant``, or None outside the campaign.

        ``[start + k*P, min(start + (k+1)*P, end)]`` for the ``k`` whose
        period holds ``instant``; an instant on a boundary belongs to the
        later period, and ``end`` itself to the last one.
        """
        if self.number_of_periods <= 0:
            return None
        instant = to_utc(instant)
        if instant < self.start or instant > self.end:
            return None
        period = self.aggregation_period
        k = (instant - self.start) // period
        cached = self._last_period
        if cached is not None and cached[0] == k:
            return cached[1]
        period_start = self.start + k * period
        try:
            period_end = min(period_start + period, self.end)
        except OverflowError:
            period_end = self.end
        # Points of one period then share these datetime objects, which
        # makes hashing and formatting them for the store's JSON cheap.
        self._last_period = (k, (period_start, period_end))
        return period_start, period_end

    def total_measurement_period_at(self, instant: datetime) -> Period | None:
        """The consent window for a grant at ``instant``, or None.

        Starts at the current period's start (its end with
        ``strengthen_anonymity``) and spans up to ``number_of_periods``
        whole periods that end no later than ``end``; None when not even
        one fits.
        """
        current = self.measurement_period_at(instant)
        if current is None:
            return None
        window_start = current[1] if self.strengthen_anonymity else current[0]
        period = self.aggregation_period
        room = self.end - window_start
        whole = min(self.number_of_periods, max(room // period, 0))
        if whole == 0:
            return None
        return window_start, window_start + whole * period

    # -- aggregation -----------------------------------------------------

    def apply(self, event: Event, value: Number | None) -> None:
        """Fold ``value`` into ``event.value``; ``times`` is already new.

        Without a value nothing changes. Otherwise the old value (0 when
        it has none) is summed with, or averaged over ``times`` with,
        ``value``.
        """
        if not is_number(value):
            return
        assert value is not None
        old = event.value if is_number(event.value) else 0
        assert old is not None
        if self.event_aggregation_rule is EventAggregationRule.avg:
            times = event.times
            event.value = (old * (times - 1) + value) / times
        else:
            event.value = old + value

    def __repr__(self) -> str:
        return (
            f"Campaign(start={format_instant(self.start)!r}, "
            f"end={format_instant(self.end)!r}, "
            f"aggregation_period_length={self.aggregation_period_length}, "
            f"number_of_periods={self.number_of_periods}, "
            f"only_record_once={self.only_record_once}, "
            f"event_aggregation_rule={self.event_aggregation_rule.value!r}, "
            f"strengthen_anonymity={self.strengthen_anonymity})"
        )
