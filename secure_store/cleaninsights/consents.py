"""Consents to features and campaigns, and the states they are in.

A consent record is ``Consent(granted, start, end)``. Feature records and
every denial have ``start == end ==`` the moment of the decision; a campaign
grant carries the window of measurement periods it covers. In the store's
JSON a record is ``{"granted": bool, "start": ISO, "end": ISO}`` under
``consents.features.<feature>`` or ``consents.campaigns.<campaign id>``.

Behaviour kept from the reference and documented here on purpose:

* Denying a campaign keeps the points already recorded for it; they are
  still sent once their period is over.
* Re-granting a campaign always overwrites its record and so recomputes
  (and may extend) the window; granting a feature again keeps the first
  grant's timestamp, and denying again keeps the first denial's.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import clock
from ._instants import floor_ms, format_instant, parse_instant, to_utc

if TYPE_CHECKING:
    from .campaign import Campaign


class Feature(enum.Enum):
    """The optional extras a user may allow to be sent."""

    lang = "lang"
    ua = "ua"


class ConsentState(enum.Enum):
    """Where a feature or campaign stands; values are the JS strings."""

    #: The campaign is not configured, or it has ended.
    unconfigured = "unconfigured"
    #: No decision is stored.
    unknown = "unknown"
    #: The user said no.
    denied = "denied"
    #: Granted, but the consented window has not begun.
    not_started = "notStarted"
    #: Granted, but the consented window is over; one may ask again.
    expired = "expired"
    #: Granted and in force now.
    granted = "granted"


def _now_ms() -> datetime:
    # Records are kept at the JSON's millisecond precision so that a
    # store compares equal to itself after a round trip through JSON.
    return floor_ms(clock.now())


class Consent:
    """One decision: granted or not, and the window it covers."""

    __slots__ = ("end", "granted", "start")

    def __init__(
        self,
        granted: bool,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> None:
        if start is None or end is None:
            instant = _now_ms()
            start = instant if start is None else start
            end = instant if end is None else end
        self.granted = bool(granted)
        self.start = to_utc(start)
        self.end = to_utc(end)

    @property
    def state(self) -> ConsentState:
        """The record's state now (see :meth:`state_at`)."""
        return self.state_at(clock.now())

    def state_at(self, instant: datetime) -> ConsentState:
        """The record's state at ``instant``, judged by its window."""
        if not self.granted:
            return ConsentState.denied
        if instant < self.start:
            return ConsentState.not_started
        if instant > self.end:
            return ConsentState.expired
        return ConsentState.granted

    def to_dict(self) -> dict[str, Any]:
        """Return the record as the store's JSON object."""
        return {
            "granted": self.granted,
            "start": format_instant(self.start),
            "end": format_instant(self.end),
        }

    @classmethod
    def from_dict(cls, data: object) -> Consent:
        """Build a record from its store JSON object.

        Raises ``ValueError`` when ``data`` is not such an object.
        """
        if isinstance(data, Consent):
            return Consent(data.granted, data.start, data.end)
        if not isinstance(data, Mapping):
            raise ValueError("consent is not an object")
        granted = data.get("granted")
        if not isinstance(granted, bool):
            raise ValueError("granted is not true or false")
        return cls(
            granted,
            _read_instant(data.get("start")),
            _read_instant(data.get("end")),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Consent):
            return NotImplemented
        return (self.granted, self.start, self.end) == (
            other.granted,
            other.start,
            other.end,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(granted={self.granted!r}, "
            f"start={self.start!r}, end={self.end!r})"
        )


def _read_instant(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return to_utc(value)
    if not isinstance(value, str):
        raise ValueError("start or end is not an ISO-8601 string")
    return parse_instant(value)


class FeatureConsent(Consent):
    """A consent record together with the feature it is about."""

    __slots__ = ("feature",)

    def __init__(self, feature: Feature, consent: Consent) -> None:
        super().__init__(consent.granted, consent.start, consent.end)
        self.feature = feature

    @property
    def state(self) -> ConsentState:
        """Feature consents are granted or denied; they never expire."""
        return ConsentState.granted if self.granted else ConsentState.denied

    def state_at(self, instant: datetime) -> ConsentState:
        """Feature consents are granted or denied at any instant."""
        return self.state


class CampaignConsent(Consent):
    """A consent record together with the campaign it is about."""

    __slots__ = ("campaign_id",)

    def __init__(self, campaign_id: str, consent: Consent) -> None:
        super().__init__(consent.granted, consent.start, consent.end)
        self.campaign_id = campaign_id


class Consents:
    """The user's stored decisions, keyed by feature value or campaign id.

    ``features`` and ``campaigns`` keep insertion order. Every method that
    needs "now" takes it from :mod:`clock`, or from ``now`` when given.
    """

    def __init__(
        self,
        features: Mapping[str, Consent] | None = None,
        campaigns: Mapping[str, Consent] | None = None,
    ) -> None:
        self.features: dict[str, Consent] = dict(features or {})
        self.campaigns: dict[str, Consent] = dict(campaigns or {})

    # -- features --------------------------------------------------------

    def grant_feature(
        self, feature: Feature, now: datetime | None = None
    ) -> FeatureConsent:
        """Record a grant unless one exists; return the feature's record."""
        record = self.features.get(feature.value)
        if record is None or not record.granted:
            record = self.features[feature.value] = self._decision(True, now)
        return FeatureConsent(feature, record)

    def deny_feature(
        self, feature: Feature, now: datetime | None = None
    ) -> FeatureConsent:
        """Record a denial unless one exists; return the feature's record."""
        record = self.features.get(feature.value)
        if record is None or record.granted:
            record = self.features[feature.value] = self._decision(False, now)
        return FeatureConsent(feature, record)

    def consent_for_feature(self, feature: Feature) -> FeatureConsent | None:
        """Return the feature's record, or None if there is none."""
        record = self.features.get(feature.value)
        return None if record is None else FeatureConsent(feature, record)

    def state_of_feature(self, feature: Feature) -> ConsentState:
        """Granted or denied as recorded; unknown without a record."""
        record = self.features.get(feature.value)
        if record is None:
            return ConsentState.unknown
        return ConsentState.granted if record.granted else ConsentState.denied

    # -- campaigns -------------------------------------------------------

    def grant_campaign(
        self,
        campaign_id: str,
        campaign: Campaign,
        now: datetime | None = None,
    ) -> CampaignConsent:
        """Record a grant for the campaign's next total period.

        Always overwrites. When no total period can be had right now the
        record is granted with ``start == end == now`` and has no effect.
        """
        moment = clock.now() if now is None else now
        window = campaign.total_measurement_period_at(moment)
        if window is None:
            instant = floor_ms(moment)
            record = Consent(True, instant, instant)
        else:
            record = Consent(True, window[0], window[1])
        self.campaigns[campaign_id] = record
        return CampaignConsent(campaign_id, record)

    def deny_campaign(
        self, campaign_id: str, now: datetime | None = None
    ) -> CampaignConsent:
        """Record a denial unless one exists; return the record."""
        record = self.campaigns.get(campaign_id)
        if record is None or record.granted:
            record = self.campaigns[campaign_id] = self._decision(False, now)
        return CampaignConsent(campaign_id, record)

    def consent_for_campaign(self, campaign_id: str) -> CampaignConsent | None:
        """Return the campaign's record, or None if there is none."""
        record = self.campaigns.get(campaign_id)
        if record is None:
            return None
        return CampaignConsent(campaign_id, record)

    def state_of_campaign(
        self, campaign_id: str, now: datetime | None = None
    ) -> ConsentState:
        """The record's state at ``now``; unknown without a record."""
        record = self.campaigns.get(campaign_id)
        if record is None:
            return ConsentState.unknown
        return record.state_at(clock.now() if now is None else now)

    # -- JSON ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the consents as the store's JSON object."""
        return {
            "features": {k: v.to_dict() for k, v in self.features.items()},
            "campaigns": {k: v.to_dict() for k, v in self.campaigns.items()},
        }

    @classmethod
    def from_dict(
        cls, data: object, skipped: list[str] | None = None
    ) -> Consents:
        """Build consents from their store JSON object (or a Consents).

        A malformed record is left out and its key path (such as
        ``consents.campaigns.x``) appended to ``skipped``; raises
        ``ValueError`` only when ``data`` is not an object at all.
        """
        if isinstance(data, Consents):
            return data
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError("consents is not an object")
        result = cls()
        for key, target in (
            ("features", result.features),
            ("campaigns", result.campaigns),
        ):
            records = data.get(key) or {}
            if not isinstance(records, Mapping):
                if skipped is not None:
                    skipped.append(f"consents.{key}")
                continue
            for name, record in records.items():
                try:
                    target[str(name)] = Consent.from_dict(record)
                except ValueError:
                    if skipped is not None:
                        skipped.append(f"consents.{key}.{name}")
        return result

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Consents):
            return NotImplemented
        return (
            self.features == other.features
            and self.campaigns == other.campaigns
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Consents(features={self.features!r}, "
            f"campaigns={self.campaigns!r})"
        )

    @staticmethod
    def _decision(granted: bool, now: datetime | None) -> Consent:
        instant = floor_ms(clock.now()) if now is None else floor_ms(now)
        return Consent(granted, instant, instant)
