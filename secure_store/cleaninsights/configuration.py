"""The Clean Insights configuration, read from a dict or a JSON file.

JSON keys are camelCase (``siteId``), attributes snake_case (``site_id``).
Unlike the reference, which checks only ``server``, ``siteId`` and that a
campaign exists, every value is checked for type and range, and the first
problem raises :class:`~secure_store.errors.ConfigurationError` naming the
key, e.g. ``campaigns.feature1.end is before start`` or ``server must be an
http(s) URL``. A numeric string such as ``"5"`` is an error, not silently
the default. Unknown keys are ignored so that configurations written for
other SDKs load.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .campaign import Campaign

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_RETRY_DELAY_S = 3600.0
DEFAULT_MAX_AGE_OF_OLD_DATA_DAYS = 100
DEFAULT_PERSIST_EVERY_N_TIMES = 10
_URL_SCHEMES = ("http", "https")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


class Configuration:
    """Where to send, for which site, which campaigns, and how often.

    >>> conf = Configuration.from_dict({
    ...     "server": "https://metrics.example.org/ci/cleaninsights.php",
    ...     "siteId": 7,
    ...     "campaigns": {"main": {
    ...         "start": "2024-01-01T00:00:00Z",
    ...         "end": "2024-12-31T23:59:59Z",
    ...         "aggregationPeriodLength": 7}}})
    >>> conf.timeout
    5.0
    """

    def __init__(
        self,
        server: str,
        site_id: int,
        campaigns: Mapping[str, Campaign],
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY_S,
        max_age_of_old_data: float = DEFAULT_MAX_AGE_OF_OLD_DATA_DAYS,
        persist_every_n_times: int = DEFAULT_PERSIST_EVERY_N_TIMES,
        server_side_anonymous_usage: bool = False,
        debug: bool = False,
    ) -> None:
        #: The CIMP endpoint the summaries are POSTed to.
        self.server = server
        #: The Matomo site id, sent as ``idsite``.
        self.site_id = site_id
        #: The campaigns by id, in configuration order.
        self.campaigns: dict[str, Campaign] = dict(campaigns)
        #: Network timeout in seconds; also the base of the retry backoff.
        self.timeout = timeout
        #: Upper bound of the retry backoff, in seconds.
        self.max_retry_delay = max_retry_delay
        #: Unsent data whose period ended longer ago than this many days
        #: is purged.
        self.max_age_of_old_data = max_age_of_old_data
        #: Persist the store after this many calls that may change it.
        self.persist_every_n_times = persist_every_n_times
        #: Count every campaign as consented and never send lang/ua.
        self.server_side_anonymous_usage = server_side_anonymous_usage
        #: Pass the SDK's debug messages to the store's debug callback.
        self.debug = debug
        self.validate()

    # -- reading ---------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Configuration:
        """Build a configuration from its JSON-shaped dict."""
        if not isinstance(data, Mapping):
            raise ConfigurationError("configuration must be a JSON object")
        raw_campaigns = data.get("campaigns")
        if raw_campaigns is None:
            raise ConfigurationError("campaigns is missing")
        if not isinstance(raw_campaigns, Mapping):
            raise ConfigurationError("campaigns must be an object")
        campaigns: dict[str, Campaign] = {}
        for campaign_id, raw in raw_campaigns.items():
            where = f"campaigns.{campaign_id}."
            if not isinstance(campaign_id, str) or not campaign_id:
                raise ConfigurationError(
                    "campaigns must be keyed by non-empty ids"
                )
            if isinstance(raw, Campaign):
                campaigns[campaign_id] = raw
            else:
                campaigns[campaign_id] = Campaign.from_dict(raw, where=where)
        return cls(
            server=data.get("server"),  # type: ignore[arg-type]  # checked
            site_id=data.get("siteId"),  # type: ignore[arg-type]
            campaigns=campaigns,
            timeout=data.get("timeout", DEFAULT_TIMEOUT_S),
            max_retry_delay=data.get(
                "maxRetryDelay", DEFAULT_MAX_RETRY_DELAY_S
            ),
            max_age_of_old_data=data.get(
                "maxAgeOfOldData", DEFAULT_MAX_AGE_OF_OLD_DATA_DAYS
            ),
            persist_every_n_times=data.get(
                "persistEveryNTimes", DEFAULT_PERSIST_EVERY_N_TIMES
            ),
            server_side_anonymous_usage=data.get(
                "serverSideAnonymousUsage", False
            ),
            debug=data.get("debug", False),
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Configuration:
        """Read a configuration from a UTF-8 JSON file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"configuration file {os.fspath(path)!r} cannot be read: "
                f"{exc.__class__.__name__}"
            ) from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"configuration file {os.fspath(path)!r} is not valid "
                f"JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from exc
        return cls.from_dict(data)

    @classmethod
    def coerce(
        cls,
        value: Configuration | Mapping[str, Any] | str | os.PathLike[str],
    ) -> Configuration:
        """Accept a Configuration, a JSON-shaped dict, or a JSON file path."""
        if isinstance(value, Configuration):
            value.validate()
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        if isinstance(value, str | os.PathLike):
            return cls.from_file(value)
        raise ConfigurationError(
            "configuration must be a Configuration, a dict or a path to a "
            f"JSON file, not {type(value).__name__}"
        )

    # -- checking --------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`ConfigurationError` for the first invalid value."""
        server = self.server
        try:
            parts = urlsplit(server) if isinstance(server, str) else None
        except ValueError:  # an unbalanced "[" in the host, say
            parts = None
        if (
            parts is None
            or parts.scheme.lower() not in _URL_SCHEMES
            or not parts.hostname
        ):
            raise ConfigurationError("server must be an http(s) URL")
        if not _is_int(self.site_id) or self.site_id < 1:
            raise ConfigurationError(
                f"siteId must be an integer >= 1, not {self.site_id!r}"
            )
        if not self.campaigns:
            raise ConfigurationError("campaigns must have at least one entry")
        for campaign_id, campaign in self.campaigns.items():
            if not isinstance(campaign, Campaign):
                raise ConfigurationError(
                    f"campaigns.{campaign_id} must be a Campaign"
                )
        self._check_number("timeout", self.timeout, "seconds", positive=True)
        self._check_number(
            "maxRetryDelay", self.max_retry_delay, "seconds", positive=False
        )
        self._check_number(
            "maxAgeOfOldData", self.max_age_of_old_data, "days", positive=True
        )
        if (
            not _is_int(self.persist_every_n_times)
            or self.persist_every_n_times < 1
        ):
            raise ConfigurationError(
                "persistEveryNTimes must be an integer >= 1, "
                f"not {self.persist_every_n_times!r}"
            )
        for key, flag in (
            ("serverSideAnonymousUsage", self.server_side_anonymous_usage),
            ("debug", self.debug),
        ):
            if not isinstance(flag, bool):
                raise ConfigurationError(
                    f"{key} must be true or false, not {flag!r}"
                )

    @staticmethod
    def _check_number(
        key: str, value: object, unit: str, *, positive: bool
    ) -> None:
        bad = not _is_number(value) or (
            value <= 0 if positive else value < 0  # type: ignore[operator]
        )
        if bad:
            bound = "> 0" if positive else ">= 0"
            raise ConfigurationError(
                f"{key} must be a number {bound} ({unit}), not {value!r}"
            )

    def check(self, debug: Callable[[str], None] | None = None) -> bool:
        """Tell whether the configuration is valid, as the reference does.

        Reports the problem through ``debug`` instead of raising.
        """
        try:
            self.validate()
        except ConfigurationError as exc:
            if debug is not None:
                debug(f"Invalid configuration: {exc}")
            return False
        return True

    # -- writing ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as its JSON-shaped dict."""
        return {
            "server": self.server,
            "siteId": self.site_id,
            "timeout": self.timeout,
            "maxRetryDelay": self.max_retry_delay,
            "maxAgeOfOldData": self.max_age_of_old_data,
            "persistEveryNTimes": self.persist_every_n_times,
            "serverSideAnonymousUsage": self.server_side_anonymous_usage,
            "debug": self.debug,
            "campaigns": {
                cid: c.to_dict() for cid, c in self.campaigns.items()
            },
        }

    def __repr__(self) -> str:
        return (
            f"Configuration(server={self.server!r}, site_id={self.site_id}, "
            f"campaigns={list(self.campaigns)!r})"
        )
