"""lang and ua: from the constructor, else from the locale and platform."""

from __future__ import annotations

import json
import platform

import pytest
from ci_helpers import SERVER, utc

from secure_store.cleaninsights import CleanInsights, Feature, MemoryStore
from secure_store.cleaninsights.clean_insights import (
    accept_language,
    default_languages,
    default_user_agent,
)
from secure_store.cleaninsights.clock import FrozenClock


def test_accept_language_weights() -> None:
    assert (
        accept_language(["de-AT", "de", "en"]) == "de-AT;q=1,de;q=0.9,en;q=0.8"
    )


def test_accept_language_stops_after_weight_one_half() -> None:
    tags = ["a", "b", "c", "d", "e", "f", "g"]
    assert accept_language(tags) == (
        "a;q=1,b;q=0.9,c;q=0.8,d;q=0.7,e;q=0.6,f;q=0.5"
    )


def test_no_languages_is_empty() -> None:
    assert accept_language([]) == ""


@pytest.fixture
def clean_locale(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_language_list_wins(clean_locale: pytest.MonkeyPatch) -> None:
    clean_locale.setenv("LANGUAGE", "de_AT:de:en_GB")
    clean_locale.setenv("LANG", "fr_FR.UTF-8")
    assert default_languages() == ["de-AT", "de", "en-GB"]


def test_locale_variable_is_used_without_a_list(
    clean_locale: pytest.MonkeyPatch,
) -> None:
    clean_locale.setenv("LC_MESSAGES", "pt_BR.UTF-8@variant")
    clean_locale.setenv("LANG", "fr_FR.UTF-8")
    assert default_languages() == ["pt-BR"]


def test_c_locale_names_no_language(clean_locale: pytest.MonkeyPatch) -> None:
    clean_locale.setenv("LANG", "C.UTF-8")
    assert default_languages() == []


def test_user_agent_names_package_and_platform() -> None:
    agent = default_user_agent()
    assert agent.startswith("secure-store/")
    assert f"Python/{platform.python_version()}" in agent
    assert platform.system() in agent


def test_locale_language_is_sent_when_granted(
    clean_locale: pytest.MonkeyPatch, clock: FrozenClock
) -> None:
    clean_locale.setenv("LANG", "de_AT.UTF-8")
    store = MemoryStore()
    ci = CleanInsights(
        {
            "server": SERVER,
            "siteId": 1,
            "serverSideAnonymousUsage": False,
            "campaigns": {
                "c": {
                    "start": "2024-01-01T00:00:00Z",
                    "end": "2024-12-31T00:00:00Z",
                    "aggregationPeriodLength": 1,
                }
            },
        },
        store,
    )
    ci.grant_campaign("c")
    ci.grant_feature(Feature.lang)
    ci.measure_visit(["A"], "c")
    clock.set(utc(2024, 1, 18, 0, 0, 1))
    ci.persist_and_send()
    body = json.loads(store.sent[0])
    assert body["lang"] == "de-AT;q=1"
    assert "ua" not in body
