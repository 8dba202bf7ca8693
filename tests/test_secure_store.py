"""SecureStore at rest: round trips, nothing readable on disk, damage kept."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from keyring.errors import KeyringLocked
from support import MemoryKeyring

from secure_store import CleanInsights, Feature, SecureStore
from secure_store.cleaninsights.clock import FrozenClock
from secure_store.errors import (
    ConfigurationError,
    KeyConfigError,
    KeyMissingError,
    KeyringLockedError,
    ProxyConfigError,
    SecureStoreError,
    StoreConflictError,
    StoreFileError,
)
from secure_store.storage.keys import KEYRING_SERVICE, KeyringKeysets
from secure_store.storage.rotation import rotate
from secure_store.transport.envelope import GatewayKey, Suite

CAMPAIGN = "weekly-screens-7f3a"
SCENE = ["MainScreen-qx", "SettingsPane-zz"]
CATEGORY, ACTION, NAME = "musicCat-91", "playAction-k2", "trackName-v8"
CONF: dict[str, Any] = {
    "server": "https://gateway.example.onion/",
    "siteId": 7,
    "campaigns": {
        CAMPAIGN: {
            "start": "2024-01-01T00:00:00Z",
            "end": "2024-12-31T23:59:59Z",
            "aggregationPeriodLength": 7,
            "numberOfPeriods": 4,
        }
    },
}
SECRETS = [CAMPAIGN, *SCENE, CATEGORY, ACTION, NAME, "lang"]


def open_store(
    folder: Path, keyring: MemoryKeyring, name: str = "app"
) -> SecureStore:
    return SecureStore(
        name=name, path=folder / f"{name}.sstore", keyring_backend=keyring
    )


def fill(store: SecureStore) -> None:
    ci = CleanInsights(CONF, store)
    ci.grant_feature(Feature.lang)
    ci.grant_campaign(CAMPAIGN)
    ci.measure_visit(SCENE, CAMPAIGN)
    ci.measure_visit(SCENE, CAMPAIGN)
    ci.measure_event(CATEGORY, ACTION, CAMPAIGN, NAME, 4.5)
    ci.persist()


def encodings(word: str) -> list[bytes]:
    return [
        word.encode("utf-8"),
        json.dumps(word).encode("utf-8"),
        word.encode("utf-16-le"),
        word.encode("utf-16-be"),
        word.encode("utf-8").hex().encode(),
    ]


def test_store_round_trips_through_the_sealed_file(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = open_store(tmp_path, memory_keyring)
    fill(store)
    written = store.to_dict()
    store.close()

    reopened = open_store(tmp_path, memory_keyring)

    assert reopened.to_dict() == written
    assert [v.times for v in reopened.visits] == [2]
    assert [e.value for e in reopened.events] == [4.5]
    assert reopened.load_error is None
    reopened.close()


def test_sealed_file_shows_no_name_in_any_encoding(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = open_store(tmp_path, memory_keyring)
    fill(store)
    store.close()

    blob = (tmp_path / "app.sstore").read_bytes()

    leaked = [w for w in SECRETS if any(f in blob for f in encodings(w))]
    assert leaked == []


def test_sealed_file_and_folder_are_private(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = open_store(tmp_path / "data", memory_keyring)
    fill(store)
    store.close()

    assert (tmp_path / "data" / "app.sstore").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700


# Byte offsets in the version 1 header: magic 0-7, version 8, AEAD id 9,
# key id 10-13, nonce 14-25; then ciphertext and the 16-byte tag.
DAMAGE_OFFSETS = {
    "magic": 0,
    "version": 8,
    "aead id": 9,
    "key id": 12,
    "nonce": 20,
    "ciphertext": 40,
    "tag": -1,
}


def damage(blob: bytes, how: str) -> bytes:
    if how in DAMAGE_OFFSETS:
        i = DAMAGE_OFFSETS[how] % len(blob)
        return blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1 :]
    return {
        "truncated by one": blob[:-1],
        "truncated to the header": blob[:26],
        "empty": b"",
    }[how]


DAMAGES = [*DAMAGE_OFFSETS, "truncated by one", "truncated to the header"]
DAMAGES += ["empty"]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_file_is_refused_and_kept(
    tmp_path: Path,
    memory_keyring: MemoryKeyring,
    clock: FrozenClock,
    how: str,
) -> None:
    store = open_store(tmp_path, memory_keyring)
    fill(store)
    store.close()
    path = tmp_path / "app.sstore"
    bad = damage(path.read_bytes(), how)
    path.write_bytes(bad)

    reopened = open_store(tmp_path, memory_keyring)

    # A damaged key id reads as a key this store never had.
    assert isinstance(reopened.load_error, (StoreFileError, KeyMissingError))
    assert reopened.visits == []
    assert [q.read_bytes() for q in reopened.quarantined] == [bad]
    reopened.persist(False, lambda error: None)
    assert reopened.quarantined[0].read_bytes() == bad
    reopened.close()


def test_file_sealed_under_another_store_name_is_refused(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = open_store(tmp_path, memory_keyring, name="alice")
    fill(store)
    store.close()
    # Same key, other name: only the name in the associated data differs.
    entry = memory_keyring.get_password(KEYRING_SERVICE, "alice")
    assert entry is not None
    memory_keyring.set_password(KEYRING_SERVICE, "bob", entry)
    original = (tmp_path / "alice.sstore").read_bytes()
    (tmp_path / "bob.sstore").write_bytes(original)

    bob = open_store(tmp_path, memory_keyring, name="bob")

    assert isinstance(bob.load_error, SecureStoreError)
    assert bob.visits == []
    assert [q.read_bytes() for q in bob.quarantined] == [original]
    bob.close()


def test_asynchronous_persist_returns_and_calls_done_once(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = open_store(tmp_path, memory_keyring)
    fill(store)
    calls: list[Exception | None] = []
    finished = threading.Event()

    def done(error: Exception | None) -> None:
        calls.append(error)
        finished.set()

    store.persist(True, done)

    assert finished.wait(5.0)
    store.close()
    assert calls == [None]


def test_bad_store_name_is_a_configuration_error(
    tmp_path: Path, memory_keyring: MemoryKeyring
) -> None:
    with pytest.raises(ConfigurationError, match="name must be"):
        SecureStore(name="../escape", keyring_backend=memory_keyring)


def test_plain_socks5_proxy_is_refused(
    tmp_path: Path, memory_keyring: MemoryKeyring
) -> None:
    with pytest.raises(ProxyConfigError, match="DNS"):
        SecureStore(
            path=tmp_path / "a.sstore",
            proxy_url="socks5://127.0.0.1:9050",
            keyring_backend=memory_keyring,
        )


def test_send_without_key_config_fails_through_done(
    tmp_path: Path, memory_keyring: MemoryKeyring
) -> None:
    store = open_store(tmp_path, memory_keyring)
    calls: list[Exception | None] = []

    store.send("{}", "https://gw.example.onion/", 1, calls.append)

    assert len(calls) == 1
    assert isinstance(calls[0], KeyConfigError)
    store.close()


def test_lost_key_quarantines_the_file_and_a_new_store_works(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = open_store(tmp_path, memory_keyring)
    fill(store)
    store.close()
    original = (tmp_path / "app.sstore").read_bytes()
    memory_keyring.delete_password(KEYRING_SERVICE, "app")

    reopened = open_store(tmp_path, memory_keyring)
    ci = CleanInsights(CONF, reopened)
    ci.grant_campaign(CAMPAIGN)
    ci.measure_visit(SCENE, CAMPAIGN)
    ci.persist()
    reopened.close()

    assert isinstance(reopened.load_error, SecureStoreError)
    assert [q.read_bytes() for q in reopened.quarantined] == [original]
    again = open_store(tmp_path, memory_keyring)
    assert [v.times for v in again.visits] == [1]
    again.close()


class LockedKeyring(MemoryKeyring):
    """A keyring whose collection is locked: every call fails."""

    def get_password(self, service: str, username: str) -> str | None:
        raise KeyringLocked("Failed to unlock the collection!")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise KeyringLocked("Failed to unlock the collection!")


def test_locked_keyring_leaves_the_store_file_untouched(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = open_store(tmp_path, memory_keyring)
    fill(store)
    store.close()
    original = (tmp_path / "app.sstore").read_bytes()

    locked = open_store(tmp_path, LockedKeyring())
    ci = CleanInsights(CONF, locked)
    ci.grant_campaign(CAMPAIGN)
    ci.measure_visit(SCENE, CAMPAIGN)
    results: list[Exception | None] = []
    locked.persist(False, results.append)
    locked.close()

    assert isinstance(locked.load_error, KeyringLockedError)
    assert len(results) == 1
    assert isinstance(results[0], SecureStoreError)
    assert locked.quarantined == []
    assert (tmp_path / "app.sstore").read_bytes() == original
    stores = sorted(p.name for p in tmp_path.glob("app.*"))
    assert stores == ["app.sstore", "app.sstore.lock"]


def test_path_that_is_a_folder_is_refused(
    tmp_path: Path, memory_keyring: MemoryKeyring
) -> None:
    with pytest.raises(ConfigurationError, match="not a folder"):
        SecureStore(path=tmp_path, keyring_backend=memory_keyring)


@pytest.mark.parametrize(
    ("server", "timeout"),
    [
        ("http://[::1/", 5),
        ("ftp://gw.example.onion/", 5),
        ("https://gw.example.onion/", "abc"),
        ("https://gw.example.onion/", 1e308),
        ("https://gw.example.onion/", -1),
    ],
)
def test_send_never_raises_and_calls_done_once(
    tmp_path: Path, memory_keyring: MemoryKeyring, server: str, timeout: Any
) -> None:
    key = GatewayKey.generate(Suite.X25519)
    store = SecureStore(
        path=tmp_path / "a.sstore",
        keyring_backend=memory_keyring,
        gateway_key_config=key.key_config().to_base64(),
    )
    calls: list[Exception | None] = []

    store.send("{}", server, timeout, calls.append)

    assert len(calls) == 1
    assert isinstance(calls[0], SecureStoreError)
    store.close()


def test_second_writer_does_not_overwrite_the_first(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    first = open_store(tmp_path, memory_keyring)
    second = open_store(tmp_path, memory_keyring)
    fill(first)
    results: list[Exception | None] = []

    second.persist(False, results.append)

    assert isinstance(results[0], StoreConflictError)
    assert isinstance(second.last_persist_error, StoreConflictError)
    first.close()
    second.close()
    reopened = open_store(tmp_path, memory_keyring)
    assert [v.times for v in reopened.visits] == [2]
    reopened.close()


def test_persist_follows_a_rotation_by_another_process(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = open_store(tmp_path, memory_keyring)
    fill(store)
    rotate(
        tmp_path / "app.sstore", "app", KeyringKeysets(backend=memory_keyring)
    )
    ci = CleanInsights(CONF, store)
    ci.measure_visit(SCENE, CAMPAIGN)
    results: list[Exception | None] = []

    store.persist(False, results.append)
    store.close()

    assert results == [None]
    reopened = open_store(tmp_path, memory_keyring)
    assert [v.times for v in reopened.visits] == [3]
    reopened.close()


class UnlockableKeyring(MemoryKeyring):
    """A keyring that stays locked until ``locked`` is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.locked = True

    def get_password(self, service: str, username: str) -> str | None:
        if self.locked:
            raise KeyringLocked("Failed to unlock the collection!")
        return super().get_password(service, username)

    def set_password(self, service: str, username: str, password: str) -> None:
        if self.locked:
            raise KeyringLocked("Failed to unlock the collection!")
        super().set_password(service, username, password)


def test_new_store_persists_once_the_keyring_is_unlocked(
    tmp_path: Path, clock: FrozenClock
) -> None:
    keyring = UnlockableKeyring()
    store = SecureStore(path=tmp_path / "app.sstore", keyring_backend=keyring)
    ci = CleanInsights(CONF, store)
    ci.grant_campaign(CAMPAIGN)
    ci.measure_visit(SCENE, CAMPAIGN)
    keyring.locked = False
    results: list[Exception | None] = []

    store.persist(False, results.append)
    store.close()

    assert results == [None]
    reopened = SecureStore(
        path=tmp_path / "app.sstore", keyring_backend=keyring
    )
    assert [v.times for v in reopened.visits] == [1]
    reopened.close()


def test_failed_persist_is_logged_as_a_warning(
    tmp_path: Path,
    memory_keyring: MemoryKeyring,
    clock: FrozenClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = open_store(tmp_path, memory_keyring)
    second = open_store(tmp_path, memory_keyring)
    fill(first)

    second.persist(False, lambda error: None)

    assert any(
        r.levelname == "WARNING" and "not persisted" in r.getMessage()
        for r in caplog.records
    )
    first.close()
    second.close()


def test_name_defaults_to_the_file_name(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = SecureStore(
        path=tmp_path / "my-app.sstore", keyring_backend=memory_keyring
    )
    fill(store)
    store.close()

    assert store.name == "my-app"
    assert memory_keyring.get_password(KEYRING_SERVICE, "my-app") is not None
