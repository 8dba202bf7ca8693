"""Reading, writing and counting the UTC instants the store keeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_SECOND = timedelta(seconds=1)
ONE_MILLISECOND = timedelta(milliseconds=1)
# isoformat(timespec="milliseconds") of a UTC instant ends in this offset.
_UTC_SUFFIX = "+00:00"
_UTC_SUFFIX_LEN = len(_UTC_SUFFIX)


def to_utc(instant: datetime) -> datetime:
    """Return ``instant`` in UTC; a naive value is read as UTC."""
    tzinfo = instant.tzinfo
    if tzinfo is UTC:
        return instant
    if tzinfo is None:
        return instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)


def floor_ms(instant: datetime) -> datetime:
    """Cut ``instant`` to whole milliseconds, the store's precision."""
    micro = instant.microsecond
    return instant.replace(microsecond=micro - micro % 1000)


def format_instant(instant: datetime) -> str:
    """Write ``instant`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC."""
    text = to_utc(instant).isoformat(timespec="milliseconds")
    return text[:-_UTC_SUFFIX_LEN] + "Z"


def parse_instant(text: str) -> datetime:
    """Read an ISO-8601 instant into an aware UTC datetime.

    A value without an offset is read as UTC. Raises ``ValueError`` for
    anything ``datetime.fromisoformat`` does not accept.
    """
    return to_utc(datetime.fromisoformat(text))


def unix_seconds(instant: datetime) -> int:
    """Return the whole Unix seconds of ``instant``, rounded down."""
    return (to_utc(instant) - EPOCH) // ONE_SECOND
