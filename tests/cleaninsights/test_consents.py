"""Consents: stored records, their states, and the CleanInsights view."""

from __future__ import annotations

from datetime import timedelta

from ci_helpers import MakeCi, utc

from secure_store.cleaninsights import (
    CampaignConsent,
    Consent,
    Consents,
    ConsentState,
    Feature,
    FeatureConsent,
)
from secure_store.cleaninsights.clock import FrozenClock

PLAYBACK = {
    "start": "2024-03-01T00:00:00Z",
    "end": "2024-03-20T12:00:00Z",
    "aggregationPeriodLength": 7,
    "numberOfPeriods": 3,
    "strengthenAnonymity": True,
}


def test_state_values_are_the_js_strings() -> None:
    assert [s.value for s in ConsentState] == [
        "unconfigured",
        "unknown",
        "denied",
        "notStarted",
        "expired",
        "granted",
    ]
    assert ConsentState.not_started.value == "notStarted"
    assert [f.value for f in Feature] == ["lang", "ua"]


def test_consent_state_follows_its_window() -> None:
    consent = Consent(True, utc(2024, 1, 15), utc(2024, 2, 12))
    assert consent.state_at(utc(2024, 1, 14)) is ConsentState.not_started
    assert consent.state_at(utc(2024, 1, 15)) is ConsentState.granted
    assert consent.state_at(utc(2024, 2, 12)) is ConsentState.granted
    assert consent.state_at(utc(2024, 2, 12, 0, 0, 1)) is ConsentState.expired
    assert Consent(False).state is ConsentState.denied


def test_grant_campaign_covers_the_next_total_period(
    make_ci: MakeCi,
) -> None:
    ci, store = make_ci()
    consent = ci.grant_campaign("weekly-screens")
    assert consent == CampaignConsent(
        "weekly-screens", Consent(True, utc(2024, 1, 15), utc(2024, 2, 12))
    )
    assert store.consents.campaigns["weekly-screens"].to_dict() == {
        "granted": True,
        "start": "2024-01-15T00:00:00.000Z",
        "end": "2024-02-12T00:00:00.000Z",
    }
    assert ci.state_of_campaign("weekly-screens") is ConsentState.granted


def test_strengthened_grant_is_not_started_until_next_period(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    strong = {
        "start": "2024-01-01T00:00:00Z",
        "end": "2024-12-31T23:59:59Z",
        "aggregationPeriodLength": 7,
        "numberOfPeriods": 4,
        "strengthenAnonymity": True,
    }
    ci, store = make_ci(campaigns={"weekly-screens": strong})
    consent = ci.grant_campaign("weekly-screens")
    assert consent is not None
    assert (consent.start, consent.end) == (utc(2024, 1, 22), utc(2024, 2, 19))
    assert ci.state_of_campaign("weekly-screens") is ConsentState.not_started

    ci.measure_visit(["Main"], "weekly-screens")
    assert store.visits == []

    clock.set(utc(2024, 1, 22))
    assert ci.state_of_campaign("weekly-screens") is ConsentState.granted


def test_grant_without_a_whole_period_left_has_no_effect(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    clock.set(utc(2024, 3, 8, 0, 0, 0))
    ci, _ = make_ci(campaigns={"playback": PLAYBACK})
    consent = ci.grant_campaign("playback")
    assert consent is not None
    assert (consent.granted, consent.start, consent.end) == (
        True,
        utc(2024, 3, 8),
        utc(2024, 3, 8),
    )
    clock.advance(timedelta(milliseconds=1))
    assert ci.state_of_campaign("playback") is ConsentState.expired


def test_regrant_overwrites_with_a_fresh_window(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, _ = make_ci()
    ci.grant_campaign("weekly-screens")
    clock.set(utc(2024, 2, 20))
    assert ci.state_of_campaign("weekly-screens") is ConsentState.expired
    consent = ci.grant_campaign("weekly-screens")
    assert consent is not None
    assert (consent.start, consent.end) == (utc(2024, 2, 19), utc(2024, 3, 18))


def test_deny_campaign_keeps_the_first_denial(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, _ = make_ci()
    first = ci.deny_campaign("weekly-screens")
    clock.advance(timedelta(days=1))
    second = ci.deny_campaign("weekly-screens")
    assert first is not None and second is not None
    assert second.start == utc(2024, 1, 17, 10)
    assert ci.state_of_campaign("weekly-screens") is ConsentState.denied


def test_deny_after_grant_replaces_the_grant(make_ci: MakeCi) -> None:
    ci, _ = make_ci()
    ci.grant_campaign("weekly-screens")
    ci.deny_campaign("weekly-screens")
    assert ci.state_of_campaign("weekly-screens") is ConsentState.denied


def test_grant_feature_keeps_the_first_grant(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, _ = make_ci()
    ci.grant_feature(Feature.lang)
    clock.advance(timedelta(hours=1))
    again = ci.grant_feature(Feature.lang)
    assert again == FeatureConsent(
        Feature.lang,
        Consent(True, utc(2024, 1, 17, 10), utc(2024, 1, 17, 10)),
    )


def test_feature_consent_never_expires(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, _ = make_ci()
    consent = ci.grant_feature(Feature.ua)
    clock.advance(timedelta(days=400))
    assert consent.state is ConsentState.granted
    assert ci.state_of_feature(Feature.ua) is ConsentState.granted


def test_deny_feature_then_grant(make_ci: MakeCi) -> None:
    ci, _ = make_ci()
    assert ci.deny_feature(Feature.lang).state is ConsentState.denied
    assert ci.state_of_feature(Feature.lang) is ConsentState.denied
    ci.grant_feature(Feature.lang)
    assert ci.state_of_feature(Feature.lang) is ConsentState.granted


def test_unknown_without_a_record(make_ci: MakeCi) -> None:
    ci, _ = make_ci()
    assert ci.state_of_feature(Feature.lang) is ConsentState.unknown
    assert ci.state_of_campaign("weekly-screens") is ConsentState.unknown
    assert ci.consent_for_feature(Feature.lang) is None
    assert ci.consent_for_campaign("weekly-screens") is None


def test_unconfigured_campaign(make_ci: MakeCi) -> None:
    ci, _ = make_ci()
    assert ci.state_of_campaign("nope") is ConsentState.unconfigured
    assert ci.grant_campaign("nope") is None
    assert ci.deny_campaign("nope") is None
    assert ci.campaign_consents == []


def test_ended_campaign_reads_unconfigured(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, _ = make_ci()
    ci.grant_campaign("weekly-screens")
    clock.set(utc(2024, 12, 31, 23, 59, 59))
    assert ci.state_of_campaign("weekly-screens") is ConsentState.unconfigured
    assert ci.consent_for_campaign("weekly-screens") is None


def test_consent_lists_keep_decision_order(make_ci: MakeCi) -> None:
    campaigns = {
        "b": PLAYBACK | {"start": "2024-01-01T00:00:00Z"},
        "a": {
            "start": "2024-01-01T00:00:00Z",
            "end": "2024-12-31T00:00:00Z",
            "aggregationPeriodLength": 1,
        },
    }
    ci, _ = make_ci(campaigns=campaigns)
    ci.grant_feature(Feature.ua)
    ci.deny_feature(Feature.lang)
    ci.grant_campaign("a")
    ci.deny_campaign("b")
    assert ci.feature_consents == ["ua", "lang"]
    assert ci.campaign_consents == ["a", "b"]


def test_anonymous_usage_grants_every_campaign(make_ci: MakeCi) -> None:
    ci, store = make_ci(serverSideAnonymousUsage=True)
    assert ci.state_of_campaign("weekly-screens") is ConsentState.granted
    assert ci.is_campaign_currently_granted("weekly-screens") is True
    ci.measure_visit(["Main"], "weekly-screens")
    assert len(store.visits) == 1
    assert store.consents == Consents()


def test_anonymous_usage_synthetic_campaign_consent_reads_granted(
    make_ci: MakeCi,
) -> None:
    ci, _ = make_ci(serverSideAnonymousUsage=True)
    consent = ci.consent_for_campaign("weekly-screens")
    assert consent is not None
    assert consent.state is ConsentState.granted
    assert (consent.start, consent.end) == (
        utc(2024, 1, 1),
        utc(2024, 12, 31, 23, 59, 59),
    )


def test_anonymous_usage_denies_features(make_ci: MakeCi) -> None:
    ci, _ = make_ci(serverSideAnonymousUsage=True)
    ci.grant_feature(Feature.lang)
    assert ci.state_of_feature(Feature.lang) is ConsentState.denied
    consent = ci.consent_for_feature(Feature.lang)
    assert consent is not None and consent.granted is False


def test_consents_round_trip_through_json() -> None:
    consents = Consents()
    consents.grant_feature(Feature.lang, utc(2024, 1, 17, 10))
    consents.deny_campaign("x", utc(2024, 1, 17, 11))
    assert Consents.from_dict(consents.to_dict()) == consents
