"""Fixtures for the Clean Insights core tests: a frozen clock, configs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from ci_helpers import BASE_CONF, MakeCi, utc

from secure_store.cleaninsights import CleanInsights, MemoryStore
from secure_store.cleaninsights.clock import FrozenClock, use_clock


@pytest.fixture
def clock() -> Iterator[FrozenClock]:
    """A frozen clock at 2024-01-17T10:00Z, installed for the test."""
    frozen = FrozenClock(utc(2024, 1, 17, 10))
    with use_clock(frozen):
        yield frozen


@pytest.fixture
def conf() -> dict[str, Any]:
    """A fresh copy of the base configuration dict."""
    return copy.deepcopy(BASE_CONF)


@pytest.fixture
def make_ci(clock: FrozenClock) -> MakeCi:
    """Build a CleanInsights over a MemoryStore; ``**conf`` overrides."""

    def make(
        campaigns: dict[str, Any] | None = None,
        store: MemoryStore | None = None,
        **overrides: Any,
    ) -> tuple[CleanInsights, MemoryStore]:
        data = copy.deepcopy(BASE_CONF)
        if campaigns is not None:
            data["campaigns"] = campaigns
        data.update(overrides)
        store = MemoryStore() if store is None else store
        ci = CleanInsights(
            data, store, languages=["de-AT", "de"], user_agent="test-ua"
        )
        return ci, store

    return make
