"""Asking for consent through a ConsentRequestUi (spec 4.5)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from ci_helpers import MakeCi, utc

from secure_store.cleaninsights import (
    Campaign,
    ConsentRequestUi,
    ConsentState,
    Feature,
)
from secure_store.cleaninsights.clock import FrozenClock

GRANTED = "weekly-screens"


class RecordingUi(ConsentRequestUi):
    """Remembers what it was asked; answers only when told to."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.complete: Callable[[bool], None] | None = None

    def show_for_campaign(
        self,
        campaign_id: str,
        campaign: Campaign,
        complete: Callable[[bool], None],
    ) -> str:
        self.asked.append(campaign_id)
        self.complete = complete
        return f"asked {campaign_id}"

    def show_for_feature(
        self, feature: Feature, complete: Callable[[bool], None]
    ) -> str:
        self.asked.append(feature.value)
        self.complete = complete
        return f"asked {feature.value}"


def test_base_ui_must_be_overridden() -> None:
    with pytest.raises(NotImplementedError):
        ConsentRequestUi().show_for_feature(Feature.lang, lambda granted: None)


def test_campaign_request_shows_the_ui_and_stores_the_answer(
    make_ci: MakeCi,
) -> None:
    ci, _ = make_ci()
    ui = RecordingUi()
    answers: list[bool] = []
    assert ci.request_consent_for_campaign(GRANTED, ui, answers.append) == (
        "asked weekly-screens"
    )
    assert ci.state_of_campaign(GRANTED) is ConsentState.unknown
    assert ui.complete is not None
    ui.complete(True)
    assert answers == [True]
    assert ci.state_of_campaign(GRANTED) is ConsentState.granted


def test_completing_a_request_persists(make_ci: MakeCi) -> None:
    ci, store = make_ci(persistEveryNTimes=1)
    ui = RecordingUi()
    ci.request_consent_for_campaign(GRANTED, ui)
    assert ui.complete is not None
    ui.complete(False)
    assert store.persist_count == 1
    assert ci.state_of_campaign(GRANTED) is ConsentState.denied


def test_second_completion_is_ignored(make_ci: MakeCi) -> None:
    ci, _ = make_ci()
    ui = RecordingUi()
    ci.request_consent_for_campaign(GRANTED, ui)
    assert ui.complete is not None
    ui.complete(False)
    ui.complete(True)
    assert ci.state_of_campaign(GRANTED) is ConsentState.denied


def test_stored_decision_answers_without_asking(make_ci: MakeCi) -> None:
    ci, _ = make_ci()
    ci.deny_campaign(GRANTED)
    ui = RecordingUi()
    answers: list[bool] = []
    assert ci.request_consent_for_campaign(GRANTED, ui, answers.append) == ""
    assert (ui.asked, answers) == ([], [False])


def test_expired_grant_answers_true_without_asking(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, _ = make_ci()
    ci.grant_campaign(GRANTED)
    clock.set(utc(2024, 3, 1))
    assert ci.state_of_campaign(GRANTED) is ConsentState.expired
    ui = RecordingUi()
    answers: list[bool] = []
    assert ci.request_consent_for_campaign(GRANTED, ui, answers.append) == ""
    assert (ui.asked, answers) == ([], [True])


def test_unconfigured_campaign_answers_false(make_ci: MakeCi) -> None:
    ci, _ = make_ci()
    answers: list[bool] = []
    assert (
        ci.request_consent_for_campaign("nope", RecordingUi(), answers.append)
        == ""
    )
    assert answers == [False]


def test_ended_campaign_answers_false(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, _ = make_ci()
    clock.set(utc(2025, 1, 1))
    answers: list[bool] = []
    ui = RecordingUi()
    ci.request_consent_for_campaign(GRANTED, ui, answers.append)
    assert (ui.asked, answers) == ([], [False])


def test_no_whole_period_left_answers_false_even_with_a_record(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, _ = make_ci()
    ci.grant_campaign(GRANTED)
    clock.set(utc(2024, 12, 30, 12))  # the last, truncated period
    answers: list[bool] = []
    ui = RecordingUi()
    ci.request_consent_for_campaign(GRANTED, ui, answers.append)
    assert (ui.asked, answers) == ([], [False])


def test_feature_request_shows_the_ui_once(make_ci: MakeCi) -> None:
    ci, _ = make_ci()
    ui = RecordingUi()
    answers: list[bool] = []
    assert ci.request_consent_for_feature(Feature.ua, ui, answers.append) == (
        "asked ua"
    )
    assert ui.complete is not None
    ui.complete(True)
    assert answers == [True]
    assert ci.request_consent_for_feature(Feature.ua, ui, answers.append) == ""
    assert (ui.asked, answers) == (["ua"], [True, True])


def test_feature_request_reports_the_stored_state(make_ci: MakeCi) -> None:
    ci, _ = make_ci(serverSideAnonymousUsage=True)
    ui = RecordingUi()
    answers: list[bool] = []
    ci.request_consent_for_feature(Feature.lang, ui, answers.append)
    assert ui.complete is not None
    ui.complete(True)
    # The stored consent is granted, whatever anonymous usage reads.
    assert answers == [True]


def test_can_ask_returns_the_window(make_ci: MakeCi) -> None:
    ci, _ = make_ci()
    assert ci.can_ask_consent_for_campaign(GRANTED) == (
        utc(2024, 1, 15),
        utc(2024, 2, 12),
    )


def test_cannot_ask_again_after_a_decision(make_ci: MakeCi) -> None:
    ci, _ = make_ci()
    ci.deny_campaign(GRANTED)
    assert ci.can_ask_consent_for_campaign(GRANTED) is None


def test_cannot_ask_for_unconfigured_or_ended(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, _ = make_ci()
    assert ci.can_ask_consent_for_campaign("nope") is None
    clock.set(utc(2024, 12, 31, 23, 59, 59))
    assert ci.can_ask_consent_for_campaign(GRANTED) is None
