"""The aggregated measurements a store keeps: DataPoint, Visit and Event.

A data point covers one measurement period of one campaign: ``first`` and
``last`` are the period's bounds (never the instants of the measurements)
and ``times`` counts the measurements merged into it. In the store's JSON
(see :meth:`DataPoint.to_dict`) keys are camelCase and instants are UTC
ISO-8601 strings with milliseconds and ``Z``; an event's absent ``name``
and ``value`` are left out rather than written as ``null``.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from json.encoder import encode_basestring as _encode
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
    last: list[Any] = [None, ""]

    def fmt(instant: datetime) -> str:
        # Consecutive points usually share the very same datetime object.
        if instant is last[0]:
            text: str = last[1]
            return text
        text = cache.get(instant)  # type: ignore[assignment]
        if text is None:
            text = cache[instant] = format_instant(instant)
        last[0], last[1] = instant, text
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


# The JSON text of points, written directly. It equals
# ``json.dumps(points_to_json(...), separators=(",", ":"),
# ensure_ascii=False)`` but builds no dict per point: with 100,000 points
# those dicts (and the garbage collector walking them) cost three times
# as much as the text itself. Anything unusual goes through json.dumps.


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _number_text(value: object) -> str | None:
    # Exact types only: bool and int/float subclasses take the slow path,
    # where json.dumps writes them its own way.
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):  # type: ignore[arg-type]
        return float.__repr__(value)
    return None


# A point's fields as a plain tuple: reading them is all a capture does,
# so a store can copy 100,000 points in a tenth of the time its JSON takes
# and write the JSON later, on another thread.
_VISIT_ROW = operator.attrgetter(
    "campaign_id", "times", "first", "last", "scene_path"
)
_EVENT_ROW = operator.attrgetter(
    "campaign_id",
    "times",
    "first",
    "last",
    "category",
    "action",
    "name",
    "value",
)


def capture_visits(visits: Iterable[Visit]) -> list[tuple[Any, ...]]:
    """Copy each visit's fields now, for :func:`visit_rows_json_text`.

    The scene path list is shared, not copied: :class:`Visit` copies the
    path it is given and nothing edits it in place.
    """
    return list(map(_VISIT_ROW, visits))


def capture_events(events: Iterable[Event]) -> list[tuple[Any, ...]]:
    """Copy each event's fields now, for :func:`event_rows_json_text`."""
    return list(map(_EVENT_ROW, events))


def visits_json_text(visits: Iterable[Visit]) -> str:
    """Return ``visits`` as the JSON array text of their store objects."""
    return visit_rows_json_text(map(_VISIT_ROW, visits))


def visit_rows_json_text(rows: Iterable[tuple[Any, ...]]) -> str:
    """Return captured visit rows as the JSON array text of the visits."""
    fmt = _text_formatter()
    parts: list[str] = []
    append = parts.append
    for campaign_id, times_value, first, last, path in rows:
        times = _number_text(times_value)
        if (
            times is None
            or type(campaign_id) is not str
            or type(path) is not list
            or not all(type(p) is str for p in path)
        ):
            visit = Visit(path, campaign_id, times_value, first, last)
            append(_dumps(visits_to_json([visit])[0]))
            continue
        append(
            f'{{"campaignId":{_encode(campaign_id)},"times":{times},'
            f'"first":{fmt(first)},"last":{fmt(last)},'
            f'"scenePath":[{",".join(map(_encode, path))}]}}'
        )
    return "[" + ",".join(parts) + "]"


def events_json_text(events: Iterable[Event]) -> str:
    """Return ``events`` as the JSON array text of their store objects."""
    return event_rows_json_text(map(_EVENT_ROW, events))


def event_rows_json_text(rows: Iterable[tuple[Any, ...]]) -> str:
    """Return captured event rows as the JSON array text of the events."""
    fmt = _text_formatter()
    parts: list[str] = []
    append = parts.append
    for row in rows:
        campaign_id, times_value, first, last, category, action, name, raw = (
            row
        )
        times = _number_text(times_value)
        value = None if raw is None else _number_text(raw)
        if (
            times is None
            or (value is None and raw is not None)
            or type(campaign_id) is not str
            or type(category) is not str
            or type(action) is not str
            or (name is not None and type(name) is not str)
        ):
            event = Event(
                category,
                action,
                name,
                raw,
                campaign_id,
                times_value,
                first,
                last,
            )
            append(_dumps(events_to_json([event])[0]))
            continue
        text = (
            f'{{"campaignId":{_encode(campaign_id)},"times":{times},'
            f'"first":{fmt(first)},"last":{fmt(last)},'
            f'"category":{_encode(category)},"action":{_encode(action)}'
        )
        if name is not None:
            text += ',"name":' + _encode(name)
        if value is not None:
            text += ',"value":' + value
        append(text + "}")
    return "[" + ",".join(parts) + "]"


def _text_formatter() -> Callable[[datetime], str]:
    plain = _formatter()
    cache: dict[str, str] = {}

    def fmt(instant: datetime) -> str:
        text = plain(instant)
        quoted = cache.get(text)
        if quoted is None:
            quoted = cache[text] = _encode(text)
        return quoted

    return fmt


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
        if type(data) is dict:
            built = self._plain_visit(data)
            if built is not None:
                return built
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
        if type(data) is dict:
            built = self._plain_event(data)
            if built is not None:
                return built
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

    # The fast paths: a well-formed object whose instants were seen before
    # is built without the checks and conversions above (which then run
    # for the first point of each period and for anything unusual).

    def _known_instants(
        self, data: dict[str, Any]
    ) -> tuple[datetime, datetime] | None:
        first = data.get("first")
        last = data.get("last")
        if type(first) is not str or type(last) is not str:
            return None
        instants = self._instants
        first_at = instants.get(first)
        last_at = instants.get(last)
        if first_at is None or last_at is None:
            return None
        return first_at, last_at

    def _plain_visit(self, data: dict[str, Any]) -> Visit | None:
        path = data.get("scenePath")
        campaign_id = data.get("campaignId")
        times = data.get("times")
        if (
            type(path) is not list
            or type(campaign_id) is not str
            or type(times) is not int
        ):
            return None
        for part in path:
            if type(part) is not str:
                return None
        bounds = self._known_instants(data)
        if bounds is None:
            return None
        visit = Visit.__new__(Visit)
        visit.campaign_id = campaign_id
        visit.times = times
        visit.first, visit.last = bounds
        visit.scene_path = list(path)
        return visit

    def _plain_event(self, data: dict[str, Any]) -> Event | None:
        campaign_id = data.get("campaignId")
        times = data.get("times")
        category = data.get("category")
        action = data.get("action")
        name = data.get("name")
        value = data.get("value")
        if (
            type(campaign_id) is not str
            or type(times) is not int
            or type(category) is not str
            or type(action) is not str
            or (name is not None and type(name) is not str)
            or not (
                value is None
                or type(value) is int
                or (type(value) is float and math.isfinite(value))
            )
        ):
            return None
        bounds = self._known_instants(data)
        if bounds is None:
            return None
        event = Event.__new__(Event)
        event.campaign_id = campaign_id
        event.times = times
        event.first, event.last = bounds
        event.category = category
        event.action = action
        event.name = name
        event.value = value
        return event
