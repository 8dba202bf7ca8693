"""Configuration: defaults, reading from dicts and files, clear errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from secure_store.cleaninsights import (
    Campaign,
    CleanInsights,
    Configuration,
    EventAggregationRule,
    MemoryStore,
)
from secure_store.errors import ConfigurationError, SecureStoreError

SPEC_EXAMPLE: dict[str, Any] = {
    "server": "https://metrics.example.org/ci/cleaninsights.php",
    "siteId": 7,
    "timeout": 10,
    "maxRetryDelay": 1800,
    "maxAgeOfOldData": 60,
    "persistEveryNTimes": 5,
    "debug": True,
    "campaigns": {
        "weekly-screens": {
            "start": "2024-01-01T00:00:00Z",
            "end": "2024-12-31T23:59:59Z",
            "aggregationPeriodLength": 7,
            "numberOfPeriods": 4,
        },
        "playback-time": {
            "start": "2024-03-01T00:00:00Z",
            "end": "2024-03-20T12:00:00Z",
            "aggregationPeriodLength": 7,
            "numberOfPeriods": 3,
            "eventAggregationRule": "avg",
            "strengthenAnonymity": True,
        },
    },
}

MINIMAL: dict[str, Any] = {
    "server": "http://127.0.0.1:9/ci",
    "siteId": 1,
    "campaigns": {
        "feature1": {
            "start": "2024-01-01T00:00:00Z",
            "end": "2024-02-01T00:00:00Z",
            "aggregationPeriodLength": 1,
        }
    },
}


def broken(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with the dotted key set to value (or removed if ...)."""
    data = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target[part]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return data


def test_spec_example_reads_every_key() -> None:
    conf = Configuration.from_dict(SPEC_EXAMPLE)
    assert conf.server == "https://metrics.example.org/ci/cleaninsights.php"
    assert conf.site_id == 7
    assert conf.timeout == 10
    assert conf.max_retry_delay == 1800
    assert conf.max_age_of_old_data == 60
    assert conf.persist_every_n_times == 5
    assert conf.debug is True
    assert conf.server_side_anonymous_usage is False
    assert list(conf.campaigns) == ["weekly-screens", "playback-time"]
    playback = conf.campaigns["playback-time"]
    assert playback.event_aggregation_rule is EventAggregationRule.avg
    assert playback.strengthen_anonymity is True
    assert playback.number_of_periods == 3


def test_defaults() -> None:
    conf = Configuration.from_dict(MINIMAL)
    assert (
        conf.timeout,
        conf.max_retry_delay,
        conf.max_age_of_old_data,
        conf.persist_every_n_times,
        conf.server_side_anonymous_usage,
        conf.debug,
    ) == (5, 3600, 100, 10, False, False)
    campaign = conf.campaigns["feature1"]
    assert campaign.number_of_periods == 1
    assert campaign.only_record_once is False
    assert campaign.event_aggregation_rule is EventAggregationRule.sum
    assert campaign.strengthen_anonymity is False


def test_unknown_keys_are_ignored() -> None:
    data = copy.deepcopy(MINIMAL)
    data["somethingNew"] = 1
    data["campaigns"]["feature1"]["future"] = True
    assert Configuration.from_dict(data).site_id == 1


def test_from_file(tmp_path: Path) -> None:
    path = tmp_path / "cleaninsights.json"
    path.write_text(json.dumps(SPEC_EXAMPLE), encoding="utf-8")
    assert Configuration.from_file(path).persist_every_n_times == 5


def test_to_dict_reads_back_equal() -> None:
    conf = Configuration.from_dict(SPEC_EXAMPLE)
    again = Configuration.from_dict(conf.to_dict())
    assert again.to_dict() == conf.to_dict()
    assert again.to_dict()["campaigns"]["playback-time"] == {
        "start": "2024-03-01T00:00:00.000Z",
        "end": "2024-03-20T12:00:00.000Z",
        "aggregationPeriodLength": 7,
        "numberOfPeriods": 3,
        "onlyRecordOnce": False,
        "eventAggregationRule": "avg",
        "strengthenAnonymity": True,
    }


def test_clean_insights_takes_a_dict_a_path_or_a_configuration(
    tmp_path: Path,
) -> None:
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(MINIMAL), encoding="utf-8")
    conf = Configuration.from_dict(MINIMAL)
    for value in (MINIMAL, path, str(path), conf):
        ci = CleanInsights(value, MemoryStore())
        assert ci.conf.server == "http://127.0.0.1:9/ci"


def test_configuration_error_is_a_value_error_and_ours() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ConfigurationError, SecureStoreError)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("server", ..., "server must be an http(s) URL"),
        ("server", "", "server must be an http(s) URL"),
        ("server", "ftp://example.org/", "server must be an http(s) URL"),
        ("server", "httpx://x", "server must be an http(s) URL"),
        ("server", "https://", "server must be an http(s) URL"),
        ("server", 5, "server must be an http(s) URL"),
        ("siteId", ..., "siteId must be an integer >= 1, not None"),
        ("siteId", 0, "siteId must be an integer >= 1, not 0"),
        ("siteId", "7", "siteId must be an integer >= 1, not '7'"),
        ("siteId", True, "siteId must be an integer >= 1, not True"),
        ("campaigns", {}, "campaigns must have at least one entry"),
        ("campaigns", ..., "campaigns is missing"),
        ("campaigns", [], "campaigns must be an object"),
        ("timeout", "5", "timeout must be a number > 0 (seconds), not '5'"),
        ("timeout", 0, "timeout must be a number > 0 (seconds), not 0"),
        (
            "maxRetryDelay",
            -1,
            "maxRetryDelay must be a number >= 0 (seconds), not -1",
        ),
        (
            "maxAgeOfOldData",
            None,
            "maxAgeOfOldData must be a number > 0 (days), not None",
        ),
        (
            "persistEveryNTimes",
            2.5,
            "persistEveryNTimes must be an integer >= 1, not 2.5",
        ),
        ("debug", "yes", "debug must be true or false, not 'yes'"),
        (
            "serverSideAnonymousUsage",
            1,
            "serverSideAnonymousUsage must be true or false, not 1",
        ),
        (
            "campaigns.feature1.end",
            "2023-12-31T00:00:00Z",
            "campaigns.feature1.end is before start",
        ),
        (
            "campaigns.feature1.start",
            ...,
            "campaigns.feature1.start is missing",
        ),
        (
            "campaigns.feature1.start",
            "next monday",
            "campaigns.feature1.start is not an ISO-8601 date and time: "
            "'next monday'",
        ),
        (
            "campaigns.feature1.end",
            20240101,
            "campaigns.feature1.end must be an ISO-8601 date and time",
        ),
        (
            "campaigns.feature1.aggregationPeriodLength",
            0,
            "campaigns.feature1.aggregationPeriodLength must be a whole "
            "number of days >= 1, not 0",
        ),
        (
            "campaigns.feature1.aggregationPeriodLength",
            ...,
            "campaigns.feature1.aggregationPeriodLength is missing",
        ),
        (
            "campaigns.feature1.aggregationPeriodLength",
            1.5,
            "campaigns.feature1.aggregationPeriodLength must be a whole "
            "number of days >= 1, not 1.5",
        ),
        (
            "campaigns.feature1.numberOfPeriods",
            "3",
            "campaigns.feature1.numberOfPeriods must be an integer >= 1, "
            "not '3'",
        ),
        (
            "campaigns.feature1.eventAggregationRule",
            "median",
            'campaigns.feature1.eventAggregationRule must be "sum" or "avg", '
            "not 'median'",
        ),
        (
            "campaigns.feature1.onlyRecordOnce",
            "true",
            "campaigns.feature1.onlyRecordOnce must be true or false, "
            "not 'true'",
        ),
        ("campaigns.feature1", 7, "campaigns.feature1 must be an object"),
    ],
)
def test_invalid_value_is_named(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Configuration.from_dict(broken(key, value))
    assert str(raised.value) == message


def test_campaign_alone_names_the_key_without_prefix() -> None:
    with pytest.raises(ConfigurationError, match=r"^end is before start$"):
        Campaign("2024-02-01", "2024-01-01", 1)


def test_clean_insights_refuses_an_invalid_configuration() -> None:
    with pytest.raises(
        ConfigurationError, match=r"^server must be an http\(s\) URL$"
    ):
        CleanInsights(broken("server", "mailto:x@y"), MemoryStore())


def test_unreadable_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot be read"):
        Configuration.from_file(tmp_path / "missing.json")


def test_invalid_json_file_names_the_position(tmp_path: Path) -> None:
    path = tmp_path / "conf.json"
    path.write_text('{"server": }', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="line 1 column 12"):
        Configuration.from_file(path)


def test_check_reports_through_debug_instead_of_raising() -> None:
    conf = Configuration.from_dict(MINIMAL)
    conf.site_id = 0
    messages: list[str] = []
    assert conf.check(messages.append) is False
    assert messages == [
        "Invalid configuration: siteId must be an integer >= 1, not 0"
    ]


def test_check_of_a_valid_configuration_is_true() -> None:
    assert Configuration.from_dict(MINIMAL).check() is True


def test_server_url_that_does_not_parse_is_a_configuration_error() -> None:
    from secure_store.cleaninsights import Configuration
    from secure_store.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="server must be an http"):
        Configuration.from_dict(
            {
                "server": "http://[::1/",
                "siteId": 1,
                "campaigns": {
                    "c": {
                        "start": "2024-01-01T00:00:00Z",
                        "end": "2024-12-31T00:00:00Z",
                        "aggregationPeriodLength": 7,
                    }
                },
            }
        )
