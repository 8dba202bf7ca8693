"""Shared helpers of the Clean Insights core tests (not fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from secure_store.cleaninsights import CleanInsights, MemoryStore

# No test ever reaches this: MemoryStore only records what it would send.
SERVER = "https://metrics.example.org/ci/cleaninsights.php"

WEEKLY: dict[str, Any] = {
    "start": "2024-01-01T00:00:00Z",
    "end": "2024-12-31T23:59:59Z",
    "aggregationPeriodLength": 7,
    "numberOfPeriods": 4,
}

BASE_CONF: dict[str, Any] = {
    "server": SERVER,
    "siteId": 7,
    "campaigns": {"weekly-screens": WEEKLY},
}

MakeCi = Callable[..., tuple[CleanInsights, MemoryStore]]


def utc(*args: int) -> datetime:
    """A UTC instant, e.g. ``utc(2024, 1, 17, 10)``."""
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]
