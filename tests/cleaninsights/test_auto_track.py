"""auto_track: one tracker per folder with a never-ending "visits" campaign."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from ci_helpers import utc

from secure_store.cleaninsights import (
    Campaign,
    CleanInsights,
    ConsentState,
    FileStore,
    MemoryStore,
)
from secure_store.cleaninsights.clock import FrozenClock

# auto_track never sends in these tests (no period ends), but the server
# is on loopback anyway.
SERVER = "http://127.0.0.1:9/ci"


@pytest.fixture(autouse=True)
def _fresh_trackers() -> Iterator[None]:
    CleanInsights._auto_trackers.clear()
    yield
    CleanInsights._auto_trackers.clear()


def test_visits_campaign_never_expires(
    tmp_path: Path, clock: FrozenClock
) -> None:
    ci = CleanInsights.auto_track(tmp_path / "ci", SERVER, 3)
    visits = ci.conf.campaigns["visits"]
    assert (visits.start, visits.end) == (
        utc(2000, 1, 1),
        utc(9999, 12, 31, 23, 59, 59),
    )
    assert (visits.aggregation_period_length, visits.number_of_periods) == (
        1,
        365,
    )


def test_app_start_is_recorded_only_with_consent(
    tmp_path: Path, clock: FrozenClock
) -> None:
    store = MemoryStore()
    ci = CleanInsights.auto_track(tmp_path, SERVER, 3, store=store)
    assert store.visits == []
    ci.grant_campaign("visits")
    CleanInsights.auto_track(tmp_path, SERVER, 3)
    assert [
        (v.scene_path, v.times, v.first, v.last) for v in store.visits
    ] == [(["app-start"], 1, utc(2024, 1, 17), utc(2024, 1, 18))]
    assert ci.consent_for_campaign("visits") is not None
    assert ci.state_of_campaign("visits") is ConsentState.granted


def test_one_tracker_per_folder(tmp_path: Path, clock: FrozenClock) -> None:
    first = CleanInsights.auto_track(tmp_path / "a", SERVER, 3)
    again = CleanInsights.auto_track(tmp_path / "a" / ".." / "a", SERVER, 4)
    other = CleanInsights.auto_track(tmp_path / "b", SERVER, 3)
    assert again is first
    assert other is not first


def test_default_store_is_a_file_in_the_folder(
    tmp_path: Path, clock: FrozenClock
) -> None:
    ci = CleanInsights.auto_track(tmp_path / "ci", SERVER, 3)
    assert isinstance(ci.store, FileStore)
    ci.grant_campaign("visits")
    ci.persist()
    stored = json.loads((tmp_path / "ci" / "cleaninsights.json").read_text())
    assert list(stored["consents"]["campaigns"]) == ["visits"]


def test_extra_campaigns_are_added(tmp_path: Path, clock: FrozenClock) -> None:
    extra = Campaign("2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z", 7)
    ci = CleanInsights.auto_track(
        tmp_path, SERVER, 3, {"feature": extra}, store=MemoryStore()
    )
    assert list(ci.conf.campaigns) == ["visits", "feature"]
