"""The one source of "now" for the Clean Insights core.

Production code calls :func:`now`. Tests and the demo install a
:class:`FrozenClock` with :func:`use_clock` and move it forward instead of
sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the current UTC time."""

    def now(self) -> datetime:
        """Return the current instant, timezone-aware, in UTC."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        """Return the wall clock's current instant in UTC."""
        return datetime.now(UTC)


class FrozenClock:
    """A clock that stands still until it is moved; thread-safe."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """Return the instant the clock was last set to."""
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock forward by ``delta`` and return the new instant."""
        with self._lock:
            self._now += delta
            return self._now

    def set(self, instant: datetime) -> None:
        """Move the clock to ``instant`` (naive values are read as UTC)."""
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
        with self._lock:
            self._now = instant.astimezone(UTC)


_clock: Clock = SystemClock()


def now() -> datetime:
    """Return the current instant from the installed clock."""
    return _clock.now()


def get_clock() -> Clock:
    """Return the installed clock."""
    return _clock


def set_clock(clock: Clock) -> Clock:
    """Install ``clock`` process-wide and return the one it replaces."""
    global _clock
    previous, _clock = _clock, clock
    return previous


@contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Install ``clock`` for the duration of a ``with`` block."""
    previous = set_clock(clock)
    try:
        yield clock
    finally:
        set_clock(previous)
