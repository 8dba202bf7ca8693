"""The Store contract: loading, the JSON shape, MemoryStore, FileStore."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from ci_helpers import MakeCi, utc

from secure_store.cleaninsights import (
    Consent,
    Consents,
    Event,
    FileStore,
    MemoryStore,
    Store,
    Visit,
)
from secure_store.cleaninsights.clock import FrozenClock
from secure_store.errors import StorageError

# Written by hand in the shape the JS BrowserStore writes (spec 6.4),
# with keys in the order that SDK writes them.
OTHER_SDK_JSON = (
    '{"consents":{"features":{"lang":{"granted":true,'
    '"start":"2024-01-17T10:00:00.000Z","end":"2024-01-17T10:00:00.000Z"}},'
    '"campaigns":{"weekly-screens":{"granted":true,'
    '"start":"2024-01-15T00:00:00.000Z","end":"2024-02-12T00:00:00.000Z"}}},'
    '"visits":[{"campaignId":"weekly-screens","times":3,'
    '"first":"2024-01-15T00:00:00.000Z","last":"2024-01-22T00:00:00.000Z",'
    '"scenePath":["Main","Settings"]}],'
    '"events":[{"campaignId":"weekly-screens","times":2,'
    '"first":"2024-01-15T00:00:00.000Z","last":"2024-01-22T00:00:00.000Z",'
    '"category":"music","action":"play","name":"track","value":12.5},'
    '{"campaignId":"weekly-screens","times":1,'
    '"first":"2024-01-15T00:00:00.000Z","last":"2024-01-22T00:00:00.000Z",'
    '"category":"app","action":"start"}]}'
)


class DictStore(Store):
    """A store whose load returns what it was given."""

    def load(self, **kwargs: Any) -> Mapping[str, Any] | None:
        data: Mapping[str, Any] | None = kwargs.get("data")
        return data

    def persist(self, asynchronous: bool, done: Any) -> None:
        done(None)

    def send(self, data: str, server: str, timeout: float, done: Any) -> None:
        done(None)


def test_other_sdk_json_loads_and_reserialises_identically() -> None:
    store = MemoryStore(data=json.loads(OTHER_SDK_JSON))
    assert store.to_json() == OTHER_SDK_JSON


def test_other_sdk_json_builds_the_expected_objects() -> None:
    store = MemoryStore(data=json.loads(OTHER_SDK_JSON))
    period = (utc(2024, 1, 15), utc(2024, 1, 22))
    assert store.visits == [
        Visit(["Main", "Settings"], "weekly-screens", 3, *period)
    ]
    assert store.events == [
        Event("music", "play", "track", 12.5, "weekly-screens", 2, *period),
        Event("app", "start", None, None, "weekly-screens", 1, *period),
    ]
    assert store.consents.campaigns["weekly-screens"] == Consent(
        True, utc(2024, 1, 15), utc(2024, 2, 12)
    )


def test_load_may_return_built_objects() -> None:
    visit = Visit(["A"], "c", 2, utc(2024, 1, 1), utc(2024, 1, 2))
    consents = Consents(campaigns={"c": Consent(False, utc(2024, 1, 1))})
    store = DictStore(data={"consents": consents, "visits": [visit]})
    assert store.visits == [visit]
    assert store.consents is consents
    assert store.events == []


def test_load_returning_none_starts_empty_with_a_debug_message() -> None:
    messages: list[str] = []
    store = DictStore(debug=messages.append)
    assert (store.consents, store.visits, store.events) == (Consents(), [], [])
    assert messages == ["Store: no stored data, starting empty."]


def test_missing_keys_count_as_empty() -> None:
    store = DictStore(data={"visits": []})
    assert store.to_dict() == {
        "consents": {"features": {}, "campaigns": {}},
        "visits": [],
        "events": [],
    }


def test_debug_is_not_passed_to_load() -> None:
    seen: dict[str, Any] = {}

    class Spy(DictStore):
        def load(self, **kwargs: Any) -> Mapping[str, Any] | None:
            seen.update(kwargs)
            return None

    Spy(debug=print, folder="x")
    assert seen == {"folder": "x"}


def test_times_that_is_not_a_number_reads_as_one() -> None:
    store = DictStore(
        data={
            "visits": [
                {
                    "campaignId": "c",
                    "times": "many",
                    "first": "2024-01-01T00:00:00.000Z",
                    "last": "2024-01-02T00:00:00.000Z",
                    "scenePath": ["A"],
                }
            ]
        }
    )
    assert store.visits[0].times == 1


def test_absent_first_and_last_read_as_now(clock: FrozenClock) -> None:
    store = DictStore(
        data={"events": [{"campaignId": "c", "category": "a", "action": "b"}]}
    )
    assert (store.events[0].first, store.events[0].last) == (
        utc(2024, 1, 17, 10),
        utc(2024, 1, 17, 10),
    )


def test_malformed_points_are_skipped_and_reported() -> None:
    messages: list[str] = []
    store = DictStore(
        debug=messages.append,
        data={
            "visits": [
                {"campaignId": "c", "scenePath": "not a list"},
                {"campaignId": "c", "scenePath": ["ok"]},
                7,
            ],
            "events": [{"campaignId": "c", "category": "a"}],
        },
    )
    assert [v.scene_path for v in store.visits] == [["ok"]]
    assert store.events == []
    assert messages == [
        "Store: skipped 2 malformed visits.",
        "Store: skipped 1 malformed events.",
    ]


def test_unknown_keys_are_ignored() -> None:
    data = json.loads(OTHER_SDK_JSON)
    data["somethingElse"] = {"x": 1}
    data["visits"][0]["extra"] = True
    assert MemoryStore(data=data).to_json() == OTHER_SDK_JSON


def test_to_json_is_compact_and_keeps_non_ascii() -> None:
    store = MemoryStore()
    store.visits.append(Visit(["Ü"], "c", 1, utc(2024, 1, 1), utc(2024, 1, 2)))
    assert store.to_json() == (
        '{"consents":{"features":{},"campaigns":{}},"visits":[{"campaignId":'
        '"c","times":1,"first":"2024-01-01T00:00:00.000Z","last":'
        '"2024-01-02T00:00:00.000Z","scenePath":["Ü"]}],"events":[]}'
    )


def test_instants_are_written_with_milliseconds_in_utc() -> None:
    from datetime import datetime, timedelta, timezone

    vienna = timezone(timedelta(hours=1))
    visit = Visit(
        ["A"],
        "c",
        1,
        datetime(2024, 1, 1, 1, 0, 0, 123456, tzinfo=vienna),
        utc(2024, 1, 2),
    )
    assert visit.to_dict()["first"] == "2024-01-01T00:00:00.123Z"


def test_store_round_trips_equal(make_ci: MakeCi) -> None:
    ci, store = make_ci()
    ci.grant_campaign("weekly-screens")
    ci.deny_feature(
        __import__("secure_store.cleaninsights").cleaninsights.Feature.ua
    )
    ci.measure_visit(["Main"], "weekly-screens")
    ci.measure_event("a", "b", "weekly-screens", "n", 1.5)
    again = MemoryStore(data=json.loads(store.to_json()))
    assert again.consents == store.consents
    assert again.visits == store.visits
    assert again.events == store.events


# -- MemoryStore -----------------------------------------------------------


def test_memory_store_records_instead_of_sending() -> None:
    store = MemoryStore()
    results: list[Exception | None] = []
    store.send("{}", "https://example.invalid/", 5, results.append)
    assert store.sent == ["{}"]
    assert results == [None]


def test_memory_store_transport_failure_reaches_done() -> None:
    def refuse(data: str, server: str, timeout: float) -> None:
        raise ConnectionError("down")

    store = MemoryStore(transport=refuse)
    results: list[Exception | None] = []
    store.send("{}", "https://example.invalid/", 5, results.append)
    assert [type(r) for r in results] == [ConnectionError]
    assert store.sent == []


# -- FileStore -------------------------------------------------------------


def test_file_store_starts_empty_without_a_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store.json")
    assert (store.visits, store.events) == ([], [])
    assert not (tmp_path / "store.json").exists()


def test_file_store_writes_the_store_json(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "store.json"
    store = FileStore(path)
    store.consents = Consents.from_dict(json.loads(OTHER_SDK_JSON)["consents"])
    results: list[Exception | None] = []
    store.persist(False, results.append)
    assert results == [None]
    assert (
        json.loads(path.read_text("utf-8"))["consents"]
        == (json.loads(OTHER_SDK_JSON)["consents"])
    )


def test_file_store_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    FileStore(path).persist(False, lambda error: None)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_file_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    store = FileStore(folder / "store.json")
    for _ in range(3):
        store.persist(False, lambda error: None)
    assert os.listdir(folder) == ["store.json"]


def test_file_store_loads_what_it_wrote(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    path.write_text(OTHER_SDK_JSON, encoding="utf-8")
    store = FileStore(path)
    store.persist(False, lambda error: None)
    assert path.read_text("utf-8") == OTHER_SDK_JSON
    assert FileStore(path).to_json() == OTHER_SDK_JSON


def test_file_store_asynchronous_persist_calls_done_on_a_worker(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.json"
    store = FileStore(path)
    finished = threading.Event()
    threads: list[str] = []

    def done(error: Exception | None) -> None:
        threads.append(threading.current_thread().name)
        finished.set()

    store.persist(True, done)
    assert finished.wait(5)
    store.close()
    assert threads[0].startswith("filestore")
    assert path.exists()


def test_file_store_snapshot_is_taken_when_persist_is_called(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.json"
    store = FileStore(path)
    gate = threading.Lock()
    gate.acquire()

    def done(error: Exception | None) -> None:
        gate.acquire(timeout=5)

    store.persist(True, done)
    store.visits.append(
        Visit(["late"], "c", 1, utc(2024, 1, 1), utc(2024, 1, 2))
    )
    gate.release()
    store.close()
    assert json.loads(path.read_text("utf-8"))["visits"] == []


def test_damaged_file_is_moved_aside_and_store_starts_empty(
    tmp_path: Path, clock: FrozenClock
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "store.json"
    path.write_text('{"consents": [trunc', encoding="utf-8")
    store = FileStore(path)
    assert store.visits == []
    assert sorted(os.listdir(folder)) == [
        "store.json.damaged-2024-01-17T10-00-00.000Z"
    ]


def test_unreadable_file_raises_instead_of_being_overwritten(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.json"
    path.mkdir()  # reading a folder fails with an OSError
    with pytest.raises(StorageError, match="cannot be read"):
        FileStore(path)


def test_file_store_send_uses_its_transport(tmp_path: Path) -> None:
    bodies: list[tuple[str, str, float]] = []
    store = FileStore(
        tmp_path / "s.json",
        transport=lambda d, s, t: bodies.append((d, s, t)),
    )
    results: list[Exception | None] = []
    store.send("{}", "http://127.0.0.1:9/", 2.5, results.append)
    assert bodies == [("{}", "http://127.0.0.1:9/", 2.5)]
    assert results == [None]


def test_extra_fields_are_written_after_the_standard_keys() -> None:
    class WithExtra(MemoryStore):
        def extra_fields(self) -> dict[str, Any]:
            return {"myStore": {"pending": "ü"}}

    store = WithExtra()
    assert store.to_json() == (
        '{"consents":{"features":{},"campaigns":{}},"visits":[],'
        '"events":[],"myStore":{"pending":"ü"}}'
    )
    assert list(store.to_dict()) == ["consents", "visits", "events", "myStore"]


def test_to_json_follows_an_overridden_to_dict() -> None:
    class Overriding(MemoryStore):
        def to_dict(self) -> dict[str, Any]:
            data = super().to_dict()
            data["extra"] = 1
            return data

    assert Overriding().to_json().endswith(',"extra":1}')


def test_one_malformed_consent_does_not_lose_the_others() -> None:
    messages: list[str] = []
    data = json.loads(OTHER_SDK_JSON)
    data["consents"]["campaigns"]["broken"] = {"granted": "yes"}
    store = MemoryStore(debug=messages.append, data=data)
    assert list(store.consents.campaigns) == ["weekly-screens"]
    assert list(store.consents.features) == ["lang"]
    assert messages == ["Store: skipped malformed consents.campaigns.broken."]
