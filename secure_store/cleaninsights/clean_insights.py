"""CleanInsights: measure visits and events, manage consents, send summaries.

How this core differs from the reference SDKs on purpose (each a known
flaw there):

* A ``store.send`` that raises counts as a failed submission, and a send
  whose ``done`` never comes is declared failed by a watchdog after
  ``timeout`` + :attr:`CleanInsights.send_watchdog_margin_s` seconds, so the
  sending-in-progress guard cannot stick. A success reported after the
  watchdog fired still cleans the sent points.
* Completing a consent request grants or denies *and* persists and sends,
  like :meth:`~CleanInsights.grant_campaign`, so a decision survives exit.
* With server-side anonymous usage the synthetic campaign consent covers
  the campaign's start to end, so its own ``state`` reads ``granted``
  (the reference's start = end = now reads ``expired`` at once).
* The server test also accepts an error whose ``status`` is 400 (see
  :class:`~secure_store.errors.SendError`), not only the message prefix.
* Cleaning after a send removes exactly the objects sent (see
  :mod:`.insights`).
* Nothing sends "evenly distributed over the day": sending happens only
  when ``measure_*``, ``grant_*``, ``deny_*`` or :meth:`persist_and_send`
  is called, and only for periods that are over.
* ``store`` is required (``TypeError`` without one); only
  :meth:`~CleanInsights.auto_track` makes a :class:`FileStore` itself.

Choices where the reference leaves Python open:

* ``conf`` is a :class:`Configuration`, a JSON-shaped dict, or the path
  of a JSON file; zone-less instants are UTC.
* ``lang`` comes from ``languages=`` or the process locale, ``ua`` from
  ``user_agent=`` or ``secure-store/<version> (<system> <release>;
  <machine>) Python/<version>``; both only when the feature is granted.
* :meth:`~CleanInsights.request_consent_for_campaign`,
  :meth:`~CleanInsights.request_consent_for_feature` (with
  :class:`ConsentRequestUi`), :meth:`~CleanInsights.test_server` and
  :meth:`~CleanInsights.can_ask_consent_for_campaign` exist; the
  by-index getters and ``measure_simple_event`` do not.
* :meth:`~CleanInsights.auto_track`'s campaign ``"visits"`` runs from
  2000-01-01T00:00Z to 9999-12-31T23:59:59Z in daily periods, a consent
  covers 365 of them, the app-start scene is ``["app-start"]``, and there
  is one tracker per folder in a process.
* A measurement whose names are not text (or cannot be written as
  UTF-8), whose scene path is a bare string, or whose value is not None
  or a finite number is discarded with a debug message, like one for an
  unknown campaign, never with an exception.
* With server-side anonymous usage, ``consent_for_campaign`` of an
  unconfigured id is None (``state_of_campaign`` still reads
  ``granted``, as in the reference).
* :meth:`~CleanInsights.persist_and_send` is public, so an app can send
  finished periods without measuring.
* The watchdog runs on real time (a ``threading.Timer``), not on
  :mod:`.clock`: it guards against a store that hangs, which a frozen
  test clock cannot show.

Behaviour kept from the reference and documented:

* Every ``measure_*``, ``grant_*`` and ``deny_*`` call counts towards
  ``persist_every_n_times``, also when the measurement is discarded
  (``grant_campaign``/``deny_campaign`` of an unconfigured id do not).
* A measurement needs the campaign to be configured, running
  (start <= now <= end) and consented. :meth:`state_of_campaign` reads
  ``unconfigured`` from the instant ``end`` on, so a measurement at exactly
  ``end`` is discarded although the last period includes ``end``.
* A point recorded mid-period right after consent still carries the
  period's start.
* A stored ``expired`` campaign consent stops
  :meth:`~CleanInsights.request_consent_for_campaign` from asking again;
  only :meth:`~CleanInsights.grant_campaign` renews it.
* Visits are keyed by the ``"/"``-joined scene path, so ``["a/b"]`` and
  ``["a", "b"]`` are the same scene.
* The failure count and time of the last failure are not persisted: a
  restarted app sends without backoff.

Threads: every public method may be called from any thread; one
re-entrant lock guards all state, and ``store.persist`` is called while
holding it. ``done`` callbacks may come on any thread; they never wait for
the lock (a callback that finds it taken leaves its work to the thread
holding it), so a store that waits for its own worker inside ``persist``
cannot deadlock against a callback from that worker. ``store.send`` is
called after the lock is released (unless the caller already held it).
"""

from __future__ import annotations

import collections
import locale
import logging
import os
import platform
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from ..errors import SendError
from . import clock
from ._instants import EPOCH
from .campaign import Campaign, Period
from .configuration import Configuration
from .consents import (
    CampaignConsent,
    Consent,
    ConsentState,
    Feature,
    FeatureConsent,
)
from .datapoints import Event, Number, Visit, is_number
from .insights import Insights
from .store import Done, FileStore, Store

logger = logging.getLogger(__name__)

#: Extra seconds past ``timeout`` before a silent send counts as failed.
SEND_WATCHDOG_MARGIN_S = 10.0
#: Accept-Language weights, as the JS SDK writes them; at most six tags.
LANGUAGE_QUALITIES = ("1", "0.9", "0.8", "0.7", "0.6", "0.5")
#: A backoff exponent beyond this is capped anyway; avoids huge floats.
MAX_BACKOFF_EXPONENT = 62

AUTO_TRACK_CAMPAIGN_ID = "visits"
AUTO_TRACK_START = datetime(2000, 1, 1, tzinfo=UTC)
AUTO_TRACK_END = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
AUTO_TRACK_PERIOD_DAYS = 1
AUTO_TRACK_NUMBER_OF_PERIODS = 365
AUTO_TRACK_SCENE_PATH = ("app-start",)
AUTO_TRACK_FILE_NAME = "cleaninsights.json"
_PACKAGE = "secure-store"

ConfLike = Configuration | Mapping[str, Any] | str | os.PathLike[str]
Completed = Callable[[bool], None]


# -- lang and ua --------------------------------------------------------------


def accept_language(languages: Sequence[str]) -> str:
    """Format language tags as the JS SDK does: ``de-AT;q=1,de;q=0.9``."""
    tags = [tag for tag in languages if tag][: len(LANGUAGE_QUALITIES)]
    pairs = zip(tags, LANGUAGE_QUALITIES, strict=False)
    return ",".join(f"{tag};q={q}" for tag, q in pairs)


def _locale_tag(value: str) -> str | None:
    # "de_AT.UTF-8@euro" -> "de-AT"; the C/POSIX locales name no language.
    tag = value.split(".", 1)[0].split("@", 1)[0].strip()
    if not tag or tag in ("C", "POSIX"):
        return None
    return tag.replace("_", "-")


def default_languages() -> list[str]:
    """The user's languages from the process locale, most preferred first.

    ``LANGUAGE`` (a colon-separated list) wins, then the first of
    ``LC_ALL``, ``LC_MESSAGES`` and ``LANG`` that is set, then
    :func:`locale.getlocale`.
    """
    candidates: list[str] = []
    language = os.environ.get("LANGUAGE", "")
    if language:
        candidates.extend(language.split(":"))
    else:
        for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
            value = os.environ.get(name)
            if value:
                candidates.append(value)
                break
        else:
            current = locale.getlocale()[0]
            if current:
                candidates.append(current)
    result: list[str] = []
    for candidate in candidates:
        tag = _locale_tag(candidate)
        if tag and tag not in result:
            result.append(tag)
    return result


def default_user_agent() -> str:
    """Build ``secure-store/<version> (<system> <release>; <machine>) ...``."""
    try:
        version = metadata.version(_PACKAGE)
    except metadata.PackageNotFoundError:  # running from a source tree
        import secure_store

        version = getattr(secure_store, "__version__", "unknown")
    system = platform.system() or "unknown"
    return (
        f"{_PACKAGE}/{version} ({system} {platform.release()}; "
        f"{platform.machine()}) Python/{platform.python_version()}"
    )


# -- consent UI ---------------------------------------------------------------


class ConsentRequestUi:
    """Asks the user for consent; subclass it for the app's UI.

    Each method shows the request and returns an identifier of what it
    showed (or ``""``); when the user decides, the UI calls
    ``complete(granted)``, on any thread, once.
    """

    def show_for_campaign(
        self, campaign_id: str, campaign: Campaign, complete: Completed
    ) -> str:
        """Ask for consent to ``campaign``; call ``complete`` later."""
        raise NotImplementedError("override show_for_campaign")

    def show_for_feature(self, feature: Feature, complete: Completed) -> str:
        """Ask for consent to ``feature``; call ``complete`` later."""
        raise NotImplementedError("override show_for_feature")


# -- internals ----------------------------------------------------------------


def _once(callback: Callable[[Exception | None], None]) -> Done:
    """Wrap a ``done`` callback so that only its first call counts."""
    guard = threading.Lock()
    called = False

    def done(error: Exception | None = None) -> None:
        nonlocal called
        with guard:
            if called:
                logger.warning("a store called done more than once; ignored")
                return
            called = True
        callback(error)

    return done


def _is_text(value: object) -> bool:
    if not isinstance(value, str):
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates cannot be stored
        return False
    return True


class _PointIndex:
    """Finds the data point a measurement merges into without a scan.

    Buckets hold the points of one campaign and key in list order, so
    the first bucket entry inside the period is the first such point of
    the list, as the reference's linear search finds. The index follows
    the store's lists by identity and length and rebuilds itself when
    either changed behind its back (a reload, a purge, a clean). It also
    knows the earliest period end, so that a send attempt can tell in
    O(1) that no point is due or old enough to purge.
    """

    def __init__(self) -> None:
        self._signature: tuple[int, int, int, int] | None = None
        self._visits: dict[tuple[str, str], list[Visit]] = {}
        self._events: dict[tuple[str, str, str, str | None], list[Event]] = {}
        self.earliest_last: datetime | None = None

    def sync(self, store: Store) -> None:
        visits, events = store.visits, store.events
        signature = (id(visits), len(visits), id(events), len(events))
        if signature == self._signature:
            return
        self._visits = {}
        self._events = {}
        earliest: datetime | None = None
        for v in visits:
            key = (v.campaign_id, "/".join(v.scene_path))
            self._visits.setdefault(key, []).append(v)
            if earliest is None or v.last < earliest:
                earliest = v.last
        for e in events:
            ekey = (e.campaign_id, e.category, e.action, e.name)
            self._events.setdefault(ekey, []).append(e)
            if earliest is None or e.last < earliest:
                earliest = e.last
        self.earliest_last = earliest
        self._signature = signature

    def find_visit(
        self, campaign_id: str, action_name: str, period: Period
    ) -> Visit | None:
        start, end = period
        for v in self._visits.get((campaign_id, action_name), ()):
            if start <= v.first <= end and start <= v.last <= end:
                return v
        return None

    def find_event(
        self,
        campaign_id: str,
        category: str,
        action: str,
        name: str | None,
        period: Period,
    ) -> Event | None:
        start, end = period
        for e in self._events.get((campaign_id, category, action, name), ()):
            if start <= e.first <= end and start <= e.last <= end:
                return e
        return None

    def add_visit(self, store: Store, visit: Visit, action_name: str) -> None:
        store.visits.append(visit)
        key = (visit.campaign_id, action_name)
        self._visits.setdefault(key, []).append(visit)
        self._added(store, visit.last)

    def add_event(self, store: Store, event: Event) -> None:
        store.events.append(event)
        key = (event.campaign_id, event.category, event.action, event.name)
        self._events.setdefault(key, []).append(event)
        self._added(store, event.last)

    def _added(self, store: Store, last: datetime) -> None:
        visits, events = store.visits, store.events
        self._signature = (id(visits), len(visits), id(events), len(events))
        if self.earliest_last is None or last < self.earliest_last:
            self.earliest_last = last


def _ignore(error: Exception | None) -> None:
    return None


class _SendAttempt:
    """One submission in flight."""

    def __init__(self, insights: Insights, data: str) -> None:
        self.insights = insights
        self.data = data
        self.finished = False
        self.timer: threading.Timer | None = None
        self.done: Done = _ignore


# -- the SDK ------------------------------------------------------------------


class CleanInsights:
    """The Clean Insights SDK: consents, measurements, persisting, sending.

    ``conf`` is a :class:`Configuration`, a JSON-shaped dict, or the path of
    a JSON file; an invalid one raises
    :class:`~secure_store.errors.ConfigurationError`. ``store`` is any
    :class:`Store`. ``languages`` (most preferred first) and ``user_agent``
    are what ``lang`` and ``ua`` carry when the user grants those features;
    by default they come from the process locale and the platform.

    >>> from secure_store.cleaninsights import MemoryStore
    >>> ci = CleanInsights({
    ...     "server": "https://metrics.example.org/ci/cleaninsights.php",
    ...     "siteId": 1,
    ...     "campaigns": {"main": {"start": "2024-01-01T00:00:00Z",
    ...                            "end": "2099-12-31T00:00:00Z",
    ...                            "aggregationPeriodLength": 7}}},
    ...     MemoryStore())
    >>> ci.grant_campaign("main").granted
    True
    >>> ci.measure_visit(["Main", "Settings"], "main")
    """

    #: Seconds past ``conf.timeout`` after which a send whose ``done``
    #: never came counts as failed.
    send_watchdog_margin_s: float = SEND_WATCHDOG_MARGIN_S

    _auto_trackers: ClassVar[dict[Path, CleanInsights]] = {}
    _auto_trackers_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        conf: ConfLike,
        store: Store,
        *,
        languages: Sequence[str] | None = None,
        user_agent: str | None = None,
    ) -> None:
        self._conf = Configuration.coerce(conf)
        if store is None:
            raise TypeError("CleanInsights needs a store")
        self.store = store
        self._lang = accept_language(
            default_languages() if languages is None else list(languages)
        )
        self._ua = default_user_agent() if user_agent is None else user_agent

        self._lock = threading.RLock()
        self._pending: collections.deque[Callable[[], None]] = (
            collections.deque()
        )
        self._index = _PointIndex()
        self._persist_counter = 0
        self._sending = False
        self._failed_submissions = 0
        self._last_failed_submission = EPOCH

    # -- state for callers and tests ---------------------------------------

    @property
    def conf(self) -> Configuration:
        """The configuration in use."""
        return self._conf

    @property
    def sending(self) -> bool:
        """True while a submission is in flight."""
        with self._locked():
            return self._sending

    @property
    def failed_submissions(self) -> int:
        """Failed submissions since the last success (drives the backoff)."""
        with self._locked():
            return self._failed_submissions

    @property
    def last_failed_submission(self) -> datetime:
        """When the last submission failed; the Unix epoch after success."""
        with self._locked():
            return self._last_failed_submission

    @property
    def persist_counter(self) -> int:
        """Calls counted since the store last persisted successfully."""
        with self._locked():
            return self._persist_counter

    # -- auto tracking ----------------------------------------------------

    @classmethod
    def auto_track(
        cls,
        storage_dir: str | os.PathLike[str],
        server: str,
        site_id: int,
        campaigns: Mapping[str, Campaign] | None = None,
        store: Store | None = None,
    ) -> CleanInsights:
        """Return the process's tracker for ``storage_dir``, creating it.

        The configuration has the defaults plus a campaign ``"visits"``
        (2000-01-01T00:00Z to 9999-12-31T23:59:59Z, daily periods, a
        consent covering 365 of them) and ``campaigns`` (which may
        replace it). Without ``store`` a :class:`FileStore` keeps
        ``cleaninsights.json`` in ``storage_dir``. Each call measures one
        visit to ``["app-start"]``, recorded only once the user granted
        ``"visits"``. A second call with the same folder returns the
        first instance and ignores the other arguments.
        """
        key = Path(os.path.abspath(storage_dir))
        with cls._auto_trackers_lock:
            tracker = cls._auto_trackers.get(key)
            if tracker is None:
                all_campaigns: dict[str, Campaign] = {
                    AUTO_TRACK_CAMPAIGN_ID: Campaign(
                        AUTO_TRACK_START,
                        AUTO_TRACK_END,
                        AUTO_TRACK_PERIOD_DAYS,
                        AUTO_TRACK_NUMBER_OF_PERIODS,
                    )
                }
                all_campaigns.update(campaigns or {})
                conf = Configuration(server, site_id, all_campaigns)
                if store is None:
                    store = FileStore(key / AUTO_TRACK_FILE_NAME)
                tracker = cls(conf, store)
                cls._auto_trackers[key] = tracker
        tracker.measure_visit(
            list(AUTO_TRACK_SCENE_PATH), AUTO_TRACK_CAMPAIGN_ID
        )
        return tracker

    # -- measuring ---------------------------------------------------------

    def measure_visit(
        self, scene_path: Sequence[str], campaign_id: str
    ) -> None:
        """Count one visit to ``scene_path`` for ``campaign_id``.

        Discarded with a debug message (never an exception) unless the
        campaign is configured, running and consented.
        """
        with self._locked():
            now = clock.now()
            campaign = self._good_campaign(campaign_id, now)
            if campaign is not None:
                self._record_visit(scene_path, campaign_id, campaign, now)
            attempt = self._persist_and_prepare_send(now)
        self._dispatch(attempt)

    def measure_event(
        self,
        category: str,
        action: str,
        campaign_id: str,
        name: str | None = None,
        value: Number | None = None,
    ) -> None:
        """Count one event; ``value`` aggregates by the campaign's rule.

        Discarded with a debug message (never an exception) unless the
        campaign is configured, running and consented, and ``value`` is
        None or a finite number.
        """
        with self._locked():
            now = clock.now()
            campaign = self._good_campaign(campaign_id, now)
            if campaign is not None:
                self._record_event(
                    category, action, name, value, campaign_id, campaign, now
                )
            attempt = self._persist_and_prepare_send(now)
        self._dispatch(attempt)

    def _good_campaign(
        self, campaign_id: str, now: datetime
    ) -> Campaign | None:
        campaign = self._conf.campaigns.get(campaign_id)
        if campaign is None:
            self._debug(
                f"Measurement discarded: campaign {campaign_id!r} is not "
                "configured."
            )
            return None
        if now < campaign.start:
            self._debug(
                f"Measurement discarded: campaign {campaign_id!r} has not "
                "started."
            )
            return None
        if now > campaign.end:
            self._debug(
                f"Measurement discarded: campaign {campaign_id!r} has ended."
            )
            return None
        if self._state_of_campaign(campaign_id, now) is not (
            ConsentState.granted
        ):
            self._debug(
                f"Measurement discarded: no consent for campaign "
                f"{campaign_id!r}."
            )
            return None
        return campaign

    def _record_visit(
        self,
        scene_path: Sequence[str],
        campaign_id: str,
        campaign: Campaign,
        now: datetime,
    ) -> None:
        if isinstance(scene_path, str) or not all(
            _is_text(part) for part in scene_path
        ):
            self._debug("Visit discarded: scene path is not a list of text.")
            return
        period = campaign.measurement_period_at(now)
        if period is None:
            self._debug(
                f"Visit discarded: campaign {campaign_id!r} has no current "
                "period."
            )
            return
        action_name = "/".join(scene_path)
        self._index.sync(self.store)
        visit = self._index.find_visit(campaign_id, action_name, period)
        if visit is None:
            visit = Visit(scene_path, campaign_id, 1, period[0], period[1])
            self._index.add_visit(self.store, visit, action_name)
            self._debug(f"Added a visit for campaign {campaign_id!r}.")
        elif not campaign.only_record_once:
            visit.times += 1

    def _record_event(
        self,
        category: str,
        action: str,
        name: str | None,
        value: Number | None,
        campaign_id: str,
        campaign: Campaign,
        now: datetime,
    ) -> None:
        if not (
            _is_text(category)
            and _is_text(action)
            and (name is None or _is_text(name))
        ):
            self._debug(
                "Event discarded: category, action or name is not text."
            )
            return
        if value is not None and not is_number(value):
            self._debug("Event discarded: value is not a finite number.")
            return
        period = campaign.measurement_period_at(now)
        if period is None:
            self._debug(
                f"Event discarded: campaign {campaign_id!r} has no current "
                "period."
            )
            return
        self._index.sync(self.store)
        event = self._index.find_event(
            campaign_id, category, action, name, period
        )
        if event is None:
            event = Event(
                category, action, name, value, campaign_id, 1, *period
            )
            self._index.add_event(self.store, event)
            self._debug(f"Added an event for campaign {campaign_id!r}.")
        elif not campaign.only_record_once:
            before = event.times, event.value
            event.times += 1
            campaign.apply(event, value)
            if event.value is not None and not is_number(event.value):
                # A sum past float's range would put Infinity in the
                # report, which no CIMP accepts: the report would be stuck.
                event.times, event.value = before
                self._debug(
                    "Event discarded: its aggregated value would not be a "
                    "finite number."
                )

    # -- consents ------------------------------------------------------------

    @property
    def feature_consents(self) -> list[str]:
        """The features with a stored decision, in the order decided."""
        with self._locked():
            return list(self.store.consents.features)

    @property
    def campaign_consents(self) -> list[str]:
        """The campaigns with a stored decision, in the order decided."""
        with self._locked():
            return list(self.store.consents.campaigns)

    def grant_feature(self, feature: Feature) -> FeatureConsent:
        """Allow ``feature`` to be sent; persists and may send."""
        with self._locked():
            now = clock.now()
            consent = self.store.consents.grant_feature(feature, now)
            attempt = self._persist_and_prepare_send(now)
        self._dispatch(attempt)
        return consent

    def deny_feature(self, feature: Feature) -> FeatureConsent:
        """Forbid ``feature``; persists and may send."""
        with self._locked():
            now = clock.now()
            consent = self.store.consents.deny_feature(feature, now)
            attempt = self._persist_and_prepare_send(now)
        self._dispatch(attempt)
        return consent

    def grant_campaign(self, campaign_id: str) -> CampaignConsent | None:
        """Consent to ``campaign_id`` for its next total period.

        None (and nothing stored) when the campaign is not configured.
        Re-granting overwrites the record with a fresh window.
        """
        with self._locked():
            campaign = self._conf.campaigns.get(campaign_id)
            if campaign is None:
                self._debug(f"Cannot grant unconfigured {campaign_id!r}.")
                return None
            now = clock.now()
            consent = self.store.consents.grant_campaign(
                campaign_id, campaign, now
            )
            attempt = self._persist_and_prepare_send(now)
        self._dispatch(attempt)
        return consent

    def deny_campaign(self, campaign_id: str) -> CampaignConsent | None:
        """Refuse ``campaign_id``; None when it is not configured.

        Points already recorded for it stay and are still sent.
        """
        with self._locked():
            if campaign_id not in self._conf.campaigns:
                self._debug(f"Cannot deny unconfigured {campaign_id!r}.")
                return None
            now = clock.now()
            consent = self.store.consents.deny_campaign(campaign_id, now)
            attempt = self._persist_and_prepare_send(now)
        self._dispatch(attempt)
        return consent

    def consent_for_feature(self, feature: Feature) -> FeatureConsent | None:
        """The stored decision on ``feature``, or None.

        With server-side anonymous usage: a denial dated now.
        """
        with self._locked():
            if self._conf.server_side_anonymous_usage:
                return FeatureConsent(feature, Consent(False))
            return self.store.consents.consent_for_feature(feature)

    def state_of_feature(self, feature: Feature) -> ConsentState:
        """Granted, denied or unknown; denied with server-side anon usage."""
        with self._locked():
            if self._conf.server_side_anonymous_usage:
                return ConsentState.denied
            return self.store.consents.state_of_feature(feature)

    def consent_for_campaign(self, campaign_id: str) -> CampaignConsent | None:
        """The stored decision on a configured, not ended campaign.

        With server-side anonymous usage: a grant covering the
        campaign's start to end (None for an unconfigured id).
        """
        with self._locked():
            now = clock.now()
            campaign = self._conf.campaigns.get(campaign_id)
            if campaign is None:
                return None
            if self._conf.server_side_anonymous_usage:
                return CampaignConsent(
                    campaign_id, Consent(True, campaign.start, campaign.end)
                )
            if now >= campaign.end:
                return None
            return self.store.consents.consent_for_campaign(campaign_id)

    def state_of_campaign(self, campaign_id: str) -> ConsentState:
        """The campaign's consent state now (see :class:`ConsentState`)."""
        with self._locked():
            return self._state_of_campaign(campaign_id, clock.now())

    def _state_of_campaign(
        self, campaign_id: str, now: datetime
    ) -> ConsentState:
        if self._conf.server_side_anonymous_usage:
            return ConsentState.granted
        campaign = self._conf.campaigns.get(campaign_id)
        if campaign is None or now >= campaign.end:
            return ConsentState.unconfigured
        return self.store.consents.state_of_campaign(campaign_id, now)

    def is_campaign_currently_granted(self, campaign_id: str) -> bool:
        """True when :meth:`state_of_campaign` is ``granted``."""
        return self.state_of_campaign(campaign_id) is ConsentState.granted

    def can_ask_consent_for_campaign(self, campaign_id: str) -> Period | None:
        """The window a consent asked for now would cover, or None.

        None when the campaign is unconfigured or ended, when no whole
        period fits before its end, or when a decision is stored (even an
        expired grant).
        """
        with self._locked():
            return self._askable_window(campaign_id, clock.now())

    def _askable_window(
        self, campaign_id: str, now: datetime
    ) -> Period | None:
        campaign = self._conf.campaigns.get(campaign_id)
        if campaign is None or now >= campaign.end:
            return None
        window = campaign.total_measurement_period_at(now)
        if window is None:
            return None
        if campaign_id in self.store.consents.campaigns:
            return None
        return window

    def request_consent_for_campaign(
        self,
        campaign_id: str,
        consent_request_ui: ConsentRequestUi,
        completed: Completed | None = None,
    ) -> str:
        """Ask the user through ``consent_request_ui`` unless not needed.

        Without asking, ``completed`` gets False (campaign unconfigured,
        ended, or without a whole period left) or the stored decision's
        ``granted``, and ``""`` is returned. Otherwise the UI's result is
        returned; when it completes, the decision is granted or denied
        (persisted, possibly sent) and passed to ``completed``.
        """
        with self._locked():
            now = clock.now()
            campaign = self._conf.campaigns.get(campaign_id)
            record = self.store.consents.campaigns.get(campaign_id)
        answer: bool | None = None
        if campaign is None or now >= campaign.end:
            self._debug(f"Not asking for consent to {campaign_id!r}.")
            answer = False
        elif campaign.total_measurement_period_at(now) is None:
            self._debug(f"No whole period of {campaign_id!r} left to ask.")
            answer = False
        elif record is not None:
            answer = record.granted
        if answer is not None:
            if completed is not None:
                completed(answer)
            return ""
        assert campaign is not None

        def complete(granted: bool) -> None:
            if granted:
                self.grant_campaign(campaign_id)
            else:
                self.deny_campaign(campaign_id)
            if completed is not None:
                completed(bool(granted))

        return consent_request_ui.show_for_campaign(
            campaign_id, campaign, _once_bool(complete)
        )

    def request_consent_for_feature(
        self,
        feature: Feature,
        consent_request_ui: ConsentRequestUi,
        completed: Completed | None = None,
    ) -> str:
        """Ask for ``feature`` unless a decision is stored.

        With a stored decision ``completed`` gets its ``granted`` and
        ``""`` is returned; otherwise the UI's result, and on completion
        the decision is stored (persisted, possibly sent) and
        ``completed`` gets whether the feature is now granted.
        """
        with self._locked():
            record = self.store.consents.features.get(feature.value)
        if record is not None:
            if completed is not None:
                completed(record.granted)
            return ""

        def complete(granted: bool) -> None:
            if granted:
                self.grant_feature(feature)
            else:
                self.deny_feature(feature)
            if completed is not None:
                with self._locked():
                    state = self.store.consents.state_of_feature(feature)
                completed(state is ConsentState.granted)

        return consent_request_ui.show_for_feature(
            feature, _once_bool(complete)
        )

    # -- persisting and sending --------------------------------------------

    def persist(self) -> None:
        """Persist the store now and synchronously (e.g. at app exit)."""
        with self._locked():
            self._persist(asynchronous=False, force=True)

    def persist_and_send(self) -> None:
        """Count a change, persist if due, and send finished periods.

        The ``measure_*``, ``grant_*`` and ``deny_*`` methods end with
        this; call it directly to send without measuring, e.g. from a
        timer or at start-up.
        """
        with self._locked():
            attempt = self._persist_and_prepare_send(clock.now())
        self._dispatch(attempt)

    def test_server(self, done: Done | None = None) -> None:
        """Check the server answers an empty body with HTTP 400.

        ``done(None)`` when it does; otherwise ``done(error)``. For
        development only: it sends an empty request to the server.
        """
        conf = self._conf

        def judged(error: Exception | None) -> None:
            if error is None:
                result: Exception | None = SendError(
                    "server should have answered 400 to an empty body"
                )
            elif getattr(error, "status", None) == 400 or str(
                error
            ).startswith("HTTP Error 400:"):
                result = None
            else:
                result = error
            self._debug(
                "Server test passed."
                if result is None
                else f"Server test failed: {result}"
            )
            if done is not None:
                done(result)

        once = _once(judged)
        try:
            self.store.send("", conf.server, conf.timeout, once)
        except Exception as exc:
            once(exc)

    def _persist(self, asynchronous: bool, force: bool = False) -> None:
        self._persist_counter += 1
        if not force and (
            self._persist_counter < self._conf.persist_every_n_times
        ):
            return
        done = _once(lambda error: self._hand_over(self._persisted, error))
        try:
            self.store.persist(asynchronous, done)
        except Exception as exc:
            done(exc)

    def _persisted(self, error: Exception | None) -> None:
        if error is None:
            self._persist_counter = 0
            self._debug("Store persisted.")
        else:
            self._debug(f"Persisting failed: {type(error).__name__}: {error}")

    def _persist_and_prepare_send(self, now: datetime) -> _SendAttempt | None:
        self._persist(asynchronous=True)

        if self._sending:
            self._debug("Data sending already in progress.")
            return None
        failures = self._failed_submissions
        if failures > 0:
            exponent = min(failures, MAX_BACKOFF_EXPONENT)
            delay_s = min(
                self._conf.timeout * 2**exponent, self._conf.max_retry_delay
            )
            wait_until = self._last_failed_submission + timedelta(
                seconds=delay_s
            )
            if now < wait_until:
                self._debug(
                    f"Waiting until {wait_until.isoformat()} to send after "
                    f"{failures} failed submissions."
                )
                return None

        self._index.sync(self.store)
        earliest = self._index.earliest_last
        if earliest is None or earliest >= now:
            # No period is over, so nothing is due and nothing is old
            # enough to purge: building Insights would find nothing.
            return None
        insights = Insights(
            self._conf, self.store, self._lang, self._ua, now=now
        )
        if insights.is_empty:
            self._debug("No data to send.")
            return None

        self._sending = True
        attempt = _SendAttempt(insights, insights.to_json())
        attempt.done = _once(
            lambda error: self._hand_over(self._sent, attempt, error)
        )
        timer = threading.Timer(
            float(self._conf.timeout) + self.send_watchdog_margin_s,
            self._hand_over,
            (self._send_timed_out, attempt),
        )
        timer.daemon = True
        attempt.timer = timer
        timer.start()
        return attempt

    def _dispatch(self, attempt: _SendAttempt | None) -> None:
        if attempt is None:
            return
        conf = self._conf
        self._debug(
            f"Sending {len(attempt.insights.visits)} visits and "
            f"{len(attempt.insights.events)} events."
        )
        try:
            self.store.send(
                attempt.data, conf.server, conf.timeout, attempt.done
            )
        except Exception as exc:
            attempt.done(exc)

    def _sent(self, attempt: _SendAttempt, error: Exception | None) -> None:
        if attempt.timer is not None:
            attempt.timer.cancel()
        if attempt.finished:
            # The watchdog gave up on this attempt already.
            if error is None:
                self._debug("A send reported success after its deadline.")
                self._succeeded(attempt)
            return
        attempt.finished = True
        self._sending = False
        if error is None:
            self._debug("Sending succeeded.")
            self._succeeded(attempt)
        else:
            self._failed(f"{type(error).__name__}: {error}")

    def _send_timed_out(self, attempt: _SendAttempt) -> None:
        if attempt.finished:
            return
        attempt.finished = True
        self._sending = False
        self._failed("the store did not report the send's outcome in time")

    def _succeeded(self, attempt: _SendAttempt) -> None:
        self._failed_submissions = 0
        self._last_failed_submission = EPOCH
        attempt.insights.clean(self.store)
        self._persist(asynchronous=True, force=True)

    def _failed(self, reason: str) -> None:
        self._failed_submissions += 1
        self._last_failed_submission = clock.now()
        self._debug(f"Sending failed ({self._failed_submissions}): {reason}")

    # -- locking -----------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._lock.acquire()
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        # Run the work callbacks left while we held the lock, then release;
        # re-check afterwards, as a callback may have queued work just
        # before we let go and found the lock still taken.
        while True:
            try:
                self._run_pending()
            finally:
                self._lock.release()
            if not self._pending or not self._lock.acquire(blocking=False):
                return

    def _run_pending(self) -> None:
        while True:
            try:
                job = self._pending.popleft()
            except IndexError:
                return
            try:
                job()
            except Exception:
                logger.exception("a store callback's work failed")

    def _hand_over(self, work: Callable[..., None], *args: Any) -> None:
        """Run ``work(*args)`` under the lock, now or by its holder."""
        self._pending.append(lambda: work(*args))
        if self._lock.acquire(blocking=False):
            self._release()

    def _debug(self, message: str) -> None:
        logger.debug("%s", message)
        if self._conf.debug:
            self.store.debug(message)


def _once_bool(callback: Completed) -> Completed:
    guard = threading.Lock()
    called = False

    def complete(granted: bool) -> None:
        nonlocal called
        with guard:
            if called:
                logger.warning("consent UI completed twice; ignored")
                return
            called = True
        callback(granted)

    return complete
