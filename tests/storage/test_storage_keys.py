"""Keysets and KeyringKeysets: format, backend policy, deadlines."""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import UTC, datetime

import keyring.core
import keyring.errors
import pytest
from keyring.backends import fail, null
from storage_fakes import (
    FakeChainer,
    HangingKeyring,
    MemoryKeyring,
    PlaintextKeyring,
    RaisingKeyring,
)

from secure_store.cleaninsights.clock import FrozenClock, use_clock
from secure_store.errors import (
    InsecureKeyringError,
    KeyMissingError,
    KeyringError,
    KeyringLockedError,
    KeyringUnavailableError,
)
from secure_store.storage.keys import KEYRING_SERVICE, KeyringKeysets, Keyset

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))


# -- Keyset --


def test_generated_keyset_has_one_32_byte_primary_key() -> None:
    keyset = Keyset.generate()

    assert list(keyset.keys) == [keyset.primary_id]
    assert len(keyset.primary_key) == 32


def test_generated_keysets_differ() -> None:
    assert Keyset.generate().primary_key != Keyset.generate().primary_key


def test_with_new_primary_keeps_the_old_key() -> None:
    keyset = Keyset(7, {7: KEY_A})

    rotated = keyset.with_new_primary()

    assert rotated.primary_id != 7
    assert rotated.keys[7] == KEY_A
    assert len(rotated.keys) == 2


def test_retain_only_drops_the_other_keys() -> None:
    keyset = Keyset(8, {7: KEY_A, 8: KEY_B})

    assert keyset.retain_only([8]) == Keyset(8, {8: KEY_B})


def test_retain_only_refuses_to_drop_the_primary() -> None:
    with pytest.raises(ValueError, match="primary"):
        Keyset(8, {7: KEY_A, 8: KEY_B}).retain_only([7])


def test_keyset_rejects_a_short_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Keyset(1, {1: b"short"})


def test_keyset_rejects_a_primary_it_does_not_hold() -> None:
    with pytest.raises(ValueError, match="not in the keyset"):
        Keyset(2, {1: KEY_A})


def test_keyset_keys_cannot_be_edited() -> None:
    keyset = Keyset(1, {1: KEY_A})

    with pytest.raises(TypeError):
        keyset.keys[2] = KEY_B  # type: ignore[index]


def test_keyset_repr_shows_ids_but_no_key() -> None:
    text = repr(Keyset(0x0A0B0C0D, {0x0A0B0C0D: KEY_A}))

    assert text == "Keyset(primary_id=0a0b0c0d, key_ids=[0a0b0c0d])"


def test_keyset_json_format() -> None:
    keyset = Keyset(2, {1: KEY_A, 2: KEY_B})

    assert json.loads(keyset.to_json()) == {
        "version": 1,
        "primary": 2,
        "keys": {
            "1": base64.b64encode(KEY_A).decode(),
            "2": base64.b64encode(KEY_B).decode(),
        },
    }


def test_keyset_json_round_trip() -> None:
    keyset = Keyset(2, {1: KEY_A, 2: KEY_B})

    assert Keyset.from_json(keyset.to_json()) == keyset


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("not json at all", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"version": 2, "primary": 1, "keys": {}}', "version 2"),
        ('{"version": 1, "keys": {}}', "missing field 'primary'"),
        ('{"version": 1, "primary": 1, "keys": {"1": "@@"}}', "base64"),
        ('{"version": 1, "primary": 1, "keys": {"1": "AAAA"}}', "32 bytes"),
        (
            '{"version": 1, "primary": 9, "keys": {"1": "'
            + base64.b64encode(KEY_A).decode()
            + '"}}',
            "not in the keyset",
        ),
    ],
)
def test_a_damaged_keyset_entry_is_a_missing_key(
    entry: str, reason: str
) -> None:
    with pytest.raises(KeyMissingError, match="damaged") as caught:
        Keyset.from_json(entry)

    assert reason in str(caught.value)


def test_a_damaged_entry_error_does_not_echo_the_key() -> None:
    secret = base64.b64encode(KEY_A).decode()
    entry = '{"version": 1, "primary": 9, "keys": {"1": "' + secret + '"}'

    with pytest.raises(KeyMissingError) as caught:
        Keyset.from_json(entry)

    assert secret not in str(caught.value)


# -- KeyringKeysets with a fake backend --


def test_create_saves_the_keyset_under_service_and_store_name() -> None:
    backend = MemoryKeyring()
    keysets = KeyringKeysets(backend=backend)

    keyset = keysets.create("shop-app")

    assert list(backend.entries) == [("secure-store", "shop-app")]
    assert KEYRING_SERVICE == "secure-store"
    saved = backend.entries[("secure-store", "shop-app")]
    assert Keyset.from_json(saved) == keyset


def test_load_returns_the_saved_keyset() -> None:
    keysets = KeyringKeysets(backend=MemoryKeyring())
    keyset = Keyset(2, {1: KEY_A, 2: KEY_B})

    keysets.save("shop-app", keyset)

    assert keysets.load("shop-app") == keyset


def test_load_of_an_unknown_store_is_none() -> None:
    assert KeyringKeysets(backend=MemoryKeyring()).load("nobody") is None


def test_load_of_a_damaged_entry_raises_key_missing() -> None:
    backend = MemoryKeyring()
    backend.entries[("secure-store", "shop-app")] = "{garbage"

    with pytest.raises(KeyMissingError, match=r"'shop-app'.*damaged"):
        KeyringKeysets(backend=backend).load("shop-app")


def test_create_refuses_to_replace_a_readable_keyset() -> None:
    keysets = KeyringKeysets(backend=MemoryKeyring())
    first = keysets.create("shop-app")

    with pytest.raises(KeyringError, match="refusing to replace"):
        keysets.create("shop-app")
    assert keysets.load("shop-app") == first


def test_create_replaces_a_damaged_entry() -> None:
    backend = MemoryKeyring()
    backend.entries[("secure-store", "shop-app")] = "{garbage"
    keysets = KeyringKeysets(backend=backend)

    keyset = keysets.create("shop-app")

    assert keysets.load("shop-app") == keyset


def test_create_keeps_a_damaged_entry_aside_with_a_timestamp() -> None:
    backend = MemoryKeyring()
    backend.entries[("secure-store", "shop-app")] = "{garbage"
    instant = datetime(2026, 12, 4, 17, 30, 1, 250000, tzinfo=UTC)

    with use_clock(FrozenClock(instant)):
        KeyringKeysets(backend=backend).create("shop-app")

    aside = ("secure-store", "shop-app#damaged-20261204T173001.250000Z")
    assert backend.entries[aside] == "{garbage"


def test_delete_removes_the_entry() -> None:
    backend = MemoryKeyring()
    keysets = KeyringKeysets(backend=backend)
    keysets.create("shop-app")

    keysets.delete("shop-app")

    assert backend.entries == {}


def test_delete_of_a_missing_entry_is_not_an_error() -> None:
    KeyringKeysets(backend=MemoryKeyring()).delete("nobody")


def test_a_custom_service_name_is_used() -> None:
    backend = MemoryKeyring()

    KeyringKeysets("other-service", backend=backend).create("s")

    assert list(backend.entries) == [("other-service", "s")]


def test_backend_name_names_module_class_and_priority() -> None:
    keysets = KeyringKeysets(backend=MemoryKeyring())

    assert keysets.backend_name == "storage_fakes.MemoryKeyring (priority 1)"


def test_the_backend_in_use_is_named_in_the_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="secure_store.storage.keys")

    KeyringKeysets(backend=MemoryKeyring()).load("s")

    assert (
        "keyring backend in use: storage_fakes.MemoryKeyring (priority 1)"
        in caplog.messages
    )


# -- backend policy --


def test_the_null_backend_is_refused() -> None:
    keysets = KeyringKeysets(backend=null.Keyring())

    with pytest.raises(InsecureKeyringError) as caught:
        keysets.load("s")

    message = str(caught.value)
    assert "keyring.backends.null.Keyring" in message
    assert "Secret Service" in message
    assert "PYTHON_KEYRING_BACKEND" in message
    assert "allow_insecure_keyring=True" in message


def test_the_null_backend_allowed_still_cannot_keep_a_key() -> None:
    keysets = KeyringKeysets(
        backend=null.Keyring(), allow_insecure_keyring=True
    )

    with pytest.raises(KeyringUnavailableError, match="did not keep"):
        keysets.create("s")


def test_a_plaintext_backend_is_refused() -> None:
    backend = PlaintextKeyring()

    with pytest.raises(InsecureKeyringError, match="PlaintextKeyring"):
        KeyringKeysets(backend=backend).create("s")
    assert backend.entries == {}


def test_a_plaintext_backend_works_when_allowed_explicitly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keysets = KeyringKeysets(
        backend=PlaintextKeyring(), allow_insecure_keyring=True
    )

    keyset = keysets.create("s")

    assert keysets.load("s") == keyset
    assert "using insecure keyring backend" in caplog.text


def test_the_fail_backend_is_unavailable_with_a_fix() -> None:
    keysets = KeyringKeysets(backend=fail.Keyring())

    with pytest.raises(KeyringUnavailableError) as caught:
        keysets.load("s")

    assert not isinstance(caught.value, InsecureKeyringError)
    message = str(caught.value)
    assert "keyring.backends.fail.Keyring" in message
    assert "install and unlock a Secret Service" in message
    assert "PYTHON_KEYRING_BACKEND" in message


def test_the_chainer_is_replaced_by_its_best_secure_backend() -> None:
    secure = MemoryKeyring()
    chained = FakeChainer([PlaintextKeyring(), secure])

    keysets = KeyringKeysets(backend=chained)
    keysets.create("s")

    assert keysets.backend is secure
    assert list(secure.entries) == [("secure-store", "s")]


def test_a_chainer_of_plaintext_backends_only_is_refused() -> None:
    chained = FakeChainer([PlaintextKeyring()])

    with pytest.raises(InsecureKeyringError):
        KeyringKeysets(backend=chained).load("s")


def test_an_empty_chainer_is_unavailable() -> None:
    with pytest.raises(KeyringUnavailableError, match="nothing to chain"):
        KeyringKeysets(backend=FakeChainer([])).load("s")


def test_a_broken_backend_setting_names_python_keyring_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "no_such_module.Keyring")

    with pytest.raises(KeyringUnavailableError, match="PYTHON_KEYRING_BACK"):
        KeyringKeysets().load("s")


# -- errors and deadlines --


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (keyring.errors.KeyringLocked("locked"), KeyringLockedError),
        (keyring.errors.InitError("Prompt dismissed"), KeyringLockedError),
        (keyring.errors.NoKeyringError("none"), KeyringUnavailableError),
        (RuntimeError("bus gone"), KeyringUnavailableError),
        (OSError("socket"), KeyringUnavailableError),
    ],
)
def test_backend_errors_are_translated(
    error: Exception, expected: type[Exception]
) -> None:
    keysets = KeyringKeysets(backend=RaisingKeyring(error))

    with pytest.raises(expected) as caught:
        keysets.load("s")

    assert caught.value.__cause__ is error


def test_locked_and_missing_are_distinct_errors() -> None:
    assert not issubclass(KeyringLockedError, KeyMissingError)
    assert not issubclass(KeyMissingError, KeyringLockedError)
    assert not issubclass(KeyringUnavailableError, KeyringLockedError)


def test_a_hanging_keyring_raises_locked_at_the_deadline() -> None:
    backend = HangingKeyring()
    keysets = KeyringKeysets(backend=backend, timeout_s=0.2)

    started = time.monotonic()
    with pytest.raises(KeyringLockedError, match=r"within 0\.2 s"):
        keysets.load("s")
    elapsed = time.monotonic() - started

    backend.release.set()
    assert 0.2 <= elapsed < 1.0


def test_calls_after_a_hang_fail_fast_instead_of_piling_up() -> None:
    backend = HangingKeyring()
    keysets = KeyringKeysets(backend=backend, timeout_s=0.2)
    with pytest.raises(KeyringLockedError):
        keysets.load("s")

    started = time.monotonic()
    with pytest.raises(KeyringLockedError, match="still has not answered"):
        keysets.load("s")
    elapsed = time.monotonic() - started

    backend.release.set()
    assert backend.entered == 1
    assert elapsed < 0.1


def test_calls_work_again_once_the_hang_ends() -> None:
    backend = HangingKeyring()
    keysets = KeyringKeysets(backend=backend, timeout_s=0.2)
    with pytest.raises(KeyringLockedError):
        keysets.load("s")

    backend.release.set()
    time.sleep(0.05)

    assert keysets.load("s") is None
