"""The aggregated measurements a store keeps: DataPoint, Visit and Event.

A data point covers one measurement period of one campaign: ``first`` and
``last`` are the period's bounds (never the instants of the measurements)
and ``times`` counts the measurements merged into it. In the store's JSON
(see :meth:`DataPoint.to_dict`) keys are camelCase and instants are UTC
ISO-8601 strings with milliseconds and ``Z``; an event's absent ``name``
and ``value`` are left out rather than written as ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from . import clock
from ._instants import format_instant, parse_instant, to_utc

Number = int | float


def is_number(value: object) -> bool:
    """Tell whether ``value`` is a finite JSON number (``bool`` is not)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


class DataPoint:
    """What every measurement has: campaign, count and period bounds."""

    __slots__ = ("campaign_id", "first", "last", "times")

    def __init__(
        self,
        campaign_id: str,
        times: int = 1,
        first: datetime | None = None,
        last: datetime | None = None,
    ) -> None:
        if first is None or last is None:
            instant = clock.now()
            first = instant if first is None else first
            last = instant if last is None else last
        self.campaign_id = campaign_id
        self.times = times
        self.first = to_utc(first)
        self.last = to_utc(last)

    def to_dict(self) -> dict[str, Any]:
        """Return the point as the store's JSON object."""
        return {
            "campaignId": self.campaign_id,
            "times": self.times,
            "first": format_instant(self.first),
            "last": format_instant(self.last),
        }

    def _fields(self) -> tuple[object, ...]:
        return (self.campaign_id, self.times, self.first, self.last)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, DataPoint)
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable: times changes

    def __repr__(self) -> str:
        names = ", ".join(
            f"{name}={value!r}"
            for name, value in zip(
                self._field_names(), self._fields(), strict=True
            )
        )
        return f"{type(self).__name__}({names})"

    def _field_names(self) -> tuple[str, ...]:
        return ("campaign_id", "times", "first", "last")


class Visit(DataPoint):
    """Visits to one scene (a path of names) in one period."""

    __slots__ = ("scene_path",)

    def __init__(
        self,
        scene_path: Sequence[str],
        campaign_id: str,
        times: int = 1,
        first: datetime | None = None,
        last: datetime | None = None,
    ) -> None:
        super().__init__(campaign_id, times, first, last)
        self.scene_path = list(scene_path)

    @property
    def action_name(self) -> str:
        """The scene path joined with ``/``, the visit's identity."""
        return "/".join(self.scene_path)

    def to_dict(self) -> dict[str, Any]:
        """Return the visit as the store's JSON object."""
        data = super().to_dict()
        data["scenePath"] = list(self.scene_path)
        return data

    def _fields(self) -> tuple[object, ...]:
        return (*super()._fields(), self.scene_path)

    def _field_names(self) -> tuple[str, ...]:
        return (*super()._field_names(), "scene_path")


class Event(DataPoint):
    """Events of one category, action and name in one period.

    ``value`` is aggregated by the campaign's rule (sum or average) and is
    not part of the event's identity.
    """

    __slots__ = ("action", "category", "name", "value")

    def __init__(
        self,
        category: str,
        action: str,
        name: str | None,
        value: Number | None,
        campaign_id: str,
        times: int = 1,
        first: datetime | None = None,
        last: datetime | None = None,
    ) -> None:
        super().__init__(campaign_id, times, first, last)
        self.category = category
        self.action = action
        self.name = name
        self.value = value

    def to_dict(self) -> dict[str, Any]:
        """Return the event as the store's JSON object."""
        data = super().to_dict()
        data["category"] = self.category
        data["action"] = self.action
        if self.name is not None:
            data["name"] = self.name
        if self.value is not None:
            data["value"] = self.value
        return data

    def _fields(self) -> tuple[object, ...]:
        return (
            *super()._fields(),
            self.category,
            self.action,
            self.name,
            self.value,
        )

    def _field_names(self) -> tuple[str, ...]:
        return (
            *super()._field_names(),
            "category",
            "action",
            "name",
            "value",
        )


# -- fast JSON writing and reading -------------------------------------------
#
# A store may hold 100,000 points, and most share a handful of period
# bounds; the helpers below format or parse each distinct instant once
# per call and build plain dicts without going through the methods above.


def _formatter() -> Callable[[datetime], str]:
    cache: dict[datetime, str] = {}

    def fmt(instant: datetime) -> str:
        text = cache.get(instant)
        if text is None:
            text = cache[instant] = format_instant(instant)
        return text

    return fmt


def visits_to_json(visits: Sequence[Visit]) -> list[dict[str, Any]]:
    """Return ``visits`` as store JSON objects, in order."""
    fmt = _formatter()
    return [
        {
            "campaignId": v.campaign_id,
            "times": v.times,
            "first": fmt(v.first),
            "last": fmt(v.last),
            "scenePath": list(v.scene_path),
        }
        for v in visits
    ]


def events_to_json(events: Sequence[Event]) -> list[dict[str, Any]]:
    """Return ``events`` as store JSON objects, in order."""
    fmt = _formatter()
    result: list[dict[str, Any]] = []
    append = result.append
    for e in events:
        item: dict[str, Any] = {
            "campaignId": e.campaign_id,
            "times": e.times,
            "first": fmt(e.first),
            "last": fmt(e.last),
            "category": e.category,
            "action": e.action,
        }
        if e.name is not None:
            item["name"] = e.name
        if e.value is not None:
            item["value"] = e.value
        append(item)
    return result


class PointReader:
    """Builds data points from store JSON, reusing parsed instants.

    Following the reference, a ``times`` that is not a number reads as 1
    and an absent ``first``/``last`` reads as now. An entry that is not an
    object, or lacks its text fields, raises ``ValueError`` naming what is
    wrong; the caller decides whether to skip it.
    """

    def __init__(self) -> None:
        self._instants: dict[str, datetime] = {}
        self._now: datetime | None = None

    def instant(self, value: object, key: str) -> datetime:
        """Read one instant; absent means now."""
        if value is None:
            if self._now is None:
                self._now = clock.now()
            return self._now
        if isinstance(value, datetime):
            return to_utc(value)
        if not isinstance(value, str):
            raise ValueError(f"{key} is not an ISO-8601 string")
        found = self._instants.get(value)
        if found is None:
            found = self._instants[value] = parse_instant(value)
        return found

    def _common(
        self, data: Mapping[str, Any]
    ) -> tuple[str, int, datetime, datetime]:
        campaign_id = data.get("campaignId")
        if not isinstance(campaign_id, str):
            raise ValueError("campaignId is not a string")
        times = data.get("times")
        if not isinstance(times, int) or isinstance(times, bool):
            # The reference reads any non-number as 1; a float count
            # (another SDK's 3.0) keeps its whole part.
            if isinstance(times, float) and math.isfinite(times):
                times = int(times)
            else:
                times = 1
        first = self.instant(data.get("first"), "first")
        last = self.instant(data.get("last"), "last")
        return campaign_id, times, first, last

    def visit(self, data: object) -> Visit:
        """Build a :class:`Visit` from its store JSON object."""
        if isinstance(data, Visit):
            return data
        if not isinstance(data, Mapping):
            raise ValueError("visit is not an object")
        path = data.get("scenePath")
        if not isinstance(path, list) or not all(
            isinstance(part, str) for part in path
        ):
            raise ValueError("scenePath is not a list of strings")
        campaign_id, times, first, last = self._common(data)
        return Visit(path, campaign_id, times, first, last)

    def event(self, data: object) -> Event:
        """Build an :class:`Event` from its store JSON object."""
        if isinstance(data, Event):
            return data
        if not isinstance(data, Mapping):
            raise ValueError("event is not an object")
        category = data.get("category")
        action = data.get("action")
        if not isinstance(category, str) or not isinstance(action, str):
            raise ValueError("category or action is not a string")
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError("name is not a string")
        value = data.get("value")
        if value is not None and not is_number(value):
            raise ValueError("value is not a number")
        campaign_id, times, first, last = self._common(data)
        return Event(
            category, action, name, value, campaign_id, times, first, last
        )
