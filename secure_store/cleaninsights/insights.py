"""The CIMP payload: which data points go, in which shape, and cleaning up.

Building an :class:`Insights` first purges every visit and event whose
period ended more than ``max_age_of_old_data`` days ago, then selects the
points of configured campaigns whose period is over (``now > last``),
whatever the consent is now. Points of campaigns that are no longer
configured stay stored until purged.

The wire body is compact JSON keeping non-ASCII text::

    {"idsite":7,"lang":"de-AT;q=1,de;q=0.9","visits":[{"action_name":
    "Main/Settings","period_start":1705276800,"period_end":1705881600,
    "times":3}],"events":[{"category":"music","action":"play","name":
    "track","value":12.5,"period_start":1705276800,"period_end":
    1705881600,"times":2}]}

``lang`` and ``ua`` appear only when the feature is granted and the
configuration does not ask for server-side anonymous usage; an event's
absent ``name``/``value`` are omitted, never ``null``.

After a successful send, :meth:`Insights.clean` removes exactly the
objects that were sent, and only if they have not changed since (the
reference removes every point with equal fields, whatever its campaign,
which could delete an unsent point of another campaign).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import clock
from ._instants import unix_seconds
from .consents import ConsentState, Feature
from .store import dumps_compact

if TYPE_CHECKING:
    from .configuration import Configuration
    from .datapoints import Event, Number, Visit
    from .store import Store


class Insights:
    """One CIMP summary built from a store; building purges old data.

    ``lang`` (an Accept-Language string) and ``ua`` are the values the
    app would send; they are included only where consent allows.
    """

    def __init__(
        self,
        conf: Configuration,
        store: Store,
        lang: str | None = None,
        ua: str | None = None,
        *,
        now: datetime | None = None,
    ) -> None:
        instant = clock.now() if now is None else now
        self.idsite: int = conf.site_id
        self.lang: str | None = None
        self.ua: str | None = None
        if not conf.server_side_anonymous_usage:
            consents = store.consents
            if consents.state_of_feature(Feature.lang) is ConsentState.granted:
                self.lang = lang or None
            if consents.state_of_feature(Feature.ua) is ConsentState.granted:
                self.ua = ua or None

        purge(store, instant - timedelta(days=conf.max_age_of_old_data))

        campaigns = conf.campaigns
        self.visits: list[Visit] = [
            v
            for v in store.visits
            if v.campaign_id in campaigns and instant > v.last
        ]
        self.events: list[Event] = [
            e
            for e in store.events
            if e.campaign_id in campaigns and instant > e.last
        ]
        # What was sent, to clean only points that did not change since.
        self._visit_times = [v.times for v in self.visits]
        self._event_state: list[tuple[int, Number | None]] = [
            (e.times, e.value) for e in self.events
        ]

    @property
    def is_empty(self) -> bool:
        """True when there is nothing to send."""
        return not self.visits and not self.events

    def to_dict(self) -> dict[str, Any]:
        """Return the wire body as a dict, keys in wire order."""
        body: dict[str, Any] = {"idsite": self.idsite}
        if self.lang is not None:
            body["lang"] = self.lang
        if self.ua is not None:
            body["ua"] = self.ua
        seconds = _seconds_cache()
        body["visits"] = [
            {
                "action_name": "/".join(v.scene_path),
                "period_start": seconds(v.first),
                "period_end": seconds(v.last),
                "times": v.times,
            }
            for v in self.visits
        ]
        events = []
        for e in self.events:
            item: dict[str, Any] = {"category": e.category, "action": e.action}
            if e.name is not None:
                item["name"] = e.name
            if e.value is not None:
                item["value"] = e.value
            item["period_start"] = seconds(e.first)
            item["period_end"] = seconds(e.last)
            item["times"] = e.times
            events.append(item)
        body["events"] = events
        return body

    def to_json(self) -> str:
        """Return the wire body as compact JSON text."""
        return dumps_compact(self.to_dict())

    def clean(self, store: Store) -> None:
        """Remove the sent points from ``store`` (after a successful send).

        A point is removed only if it is the very object sent and its
        count (and an event's value) is still what was sent.
        """
        sent_visits = {
            id(v): times
            for v, times in zip(self.visits, self._visit_times, strict=True)
        }
        if sent_visits:
            store.visits[:] = [
                v for v in store.visits if sent_visits.get(id(v)) != v.times
            ]
        sent_events = {
            id(e): state
            for e, state in zip(self.events, self._event_state, strict=True)
        }
        if sent_events:
            store.events[:] = [
                e
                for e in store.events
                if sent_events.get(id(e)) != (e.times, e.value)
            ]


def purge(store: Store, oldest: datetime) -> int:
    """Remove every point whose period ended before ``oldest``.

    Returns how many were removed.
    """
    removed = 0
    if any(v.last < oldest for v in store.visits):
        kept_visits = [v for v in store.visits if not v.last < oldest]
        removed += len(store.visits) - len(kept_visits)
        store.visits[:] = kept_visits
    if any(e.last < oldest for e in store.events):
        kept_events = [e for e in store.events if not e.last < oldest]
        removed += len(store.events) - len(kept_events)
        store.events[:] = kept_events
    return removed


def _seconds_cache() -> Callable[[datetime], int]:
    cache: dict[datetime, int] = {}

    def seconds(instant: datetime) -> int:
        value = cache.get(instant)
        if value is None:
            value = cache[instant] = unix_seconds(instant)
        return value

    return seconds
