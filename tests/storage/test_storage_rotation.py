"""rotate() and describe(): key rotation that cannot lose a store."""

from __future__ import annotations

import base64
from pathlib import Path

import keyring.errors
import pytest
from storage_fakes import MemoryKeyring, RaisingKeyring

from secure_store.errors import KeyMissingError, StoreLockedError
from secure_store.storage import (
    KeyringKeysets,
    Keyset,
    SealedFile,
    describe,
    rotate,
)

PLAINTEXT = b'{"visits":[{"scene":"main/settings"}]}'
OLD = 0x0000AAAA
NEW = 0x0000BBBB
OLD_KEY = bytes([1]) * 32
NEW_KEY = bytes([2]) * 32


@pytest.fixture
def keysets() -> KeyringKeysets:
    return KeyringKeysets(backend=MemoryKeyring())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "app.sealed"


@pytest.fixture
def sealed(path: Path) -> SealedFile:
    return SealedFile(path, "app", lock_timeout_s=0.3)


def make_store(
    sealed: SealedFile,
    keysets: KeyringKeysets,
    in_keyring: Keyset,
    file_keyset: Keyset,
) -> None:
    sealed.write(PLAINTEXT, file_keyset)
    keysets.save("app", in_keyring)


# -- a full rotation --


def test_rotation_leaves_one_new_key_and_a_file_sealed_under_it(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    old = Keyset(OLD, {OLD: OLD_KEY})
    make_store(sealed, keysets, old, old)

    result = rotate(path, "app", keysets)

    after = keysets.load("app")
    assert after is not None
    assert after.key_ids == (result.new_key_id,)
    assert result.new_key_id != OLD
    assert sealed.header().key_id == result.new_key_id
    assert sealed.read(after) == PLAINTEXT


def test_rotation_reports_what_it_did(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    old = Keyset(OLD, {OLD: OLD_KEY})
    make_store(sealed, keysets, old, old)

    result = rotate(path, "app", keysets)

    assert result.key_ids_before == (OLD,)
    assert result.file_key_id_before == OLD
    assert result.created_key is True
    assert result.resealed is True
    assert result.dropped_key_ids == (OLD,)


def test_the_rotation_summary_names_key_ids_and_no_key(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    old = Keyset(OLD, {OLD: OLD_KEY})
    make_store(sealed, keysets, old, old)

    result = rotate(path, "app", keysets)
    text = "\n".join(result.summary())

    after = keysets.load("app")
    assert after is not None
    assert f"re-sealed the file: key 0000aaaa -> {result.new_key_id:08x}" in (
        text
    )
    assert "dropped key(s): 0000aaaa" in text
    for key in (OLD_KEY, after.primary_key):
        assert base64.b64encode(key).decode() not in text
        assert key.hex() not in text


def test_rotating_twice_rotates_twice(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    old = Keyset(OLD, {OLD: OLD_KEY})
    make_store(sealed, keysets, old, old)

    first = rotate(path, "app", keysets)
    second = rotate(path, "app", keysets)

    assert second.new_key_id not in (OLD, first.new_key_id)
    assert second.dropped_key_ids == (first.new_key_id,)


# -- finishing an interrupted rotation --


def test_a_rotation_killed_after_adding_the_key_is_finished(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    old = Keyset(OLD, {OLD: OLD_KEY})
    both = Keyset(NEW, {OLD: OLD_KEY, NEW: NEW_KEY})
    make_store(sealed, keysets, in_keyring=both, file_keyset=old)

    result = rotate(path, "app", keysets)

    assert result.created_key is False
    assert result.resealed is True
    assert result.new_key_id == NEW
    assert keysets.load("app") == Keyset(NEW, {NEW: NEW_KEY})
    assert sealed.header().key_id == NEW


def test_a_rotation_killed_after_resealing_is_finished(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    both = Keyset(NEW, {OLD: OLD_KEY, NEW: NEW_KEY})
    make_store(sealed, keysets, in_keyring=both, file_keyset=both)

    result = rotate(path, "app", keysets)

    assert result.created_key is False
    assert result.resealed is False
    assert result.dropped_key_ids == (OLD,)
    assert keysets.load("app") == Keyset(NEW, {NEW: NEW_KEY})


def test_retire_all_makes_a_fresh_key_even_over_an_interrupted_run(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    old = Keyset(OLD, {OLD: OLD_KEY})
    both = Keyset(NEW, {OLD: OLD_KEY, NEW: NEW_KEY})
    make_store(sealed, keysets, in_keyring=both, file_keyset=old)

    result = rotate(path, "app", keysets, retire_all=True)

    after = keysets.load("app")
    assert after is not None
    assert result.created_key is True
    assert after.key_ids == (result.new_key_id,)
    assert result.new_key_id not in (OLD, NEW)
    assert result.dropped_key_ids == (OLD, NEW)
    assert sealed.read(after) == PLAINTEXT


# -- what rotation refuses --


def test_rotation_without_a_keyset_is_a_missing_key(
    keysets: KeyringKeysets, path: Path
) -> None:
    with pytest.raises(KeyMissingError, match="nothing to rotate"):
        rotate(path, "app", keysets)


def test_rotation_of_a_file_whose_key_is_gone_changes_nothing(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    make_store(
        sealed,
        keysets,
        in_keyring=Keyset(NEW, {NEW: NEW_KEY}),
        file_keyset=Keyset(OLD, {OLD: OLD_KEY}),
    )
    data = path.read_bytes()

    with pytest.raises(KeyMissingError, match="0000aaaa"):
        rotate(path, "app", keysets)

    assert path.read_bytes() == data
    assert keysets.load("app") == Keyset(NEW, {NEW: NEW_KEY})


def test_rotation_waits_for_the_write_lock_then_gives_up(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    old = Keyset(OLD, {OLD: OLD_KEY})
    make_store(sealed, keysets, old, old)

    with (
        SealedFile(path, "app").locked(),
        pytest.raises(StoreLockedError),
    ):
        rotate(path, "app", keysets, lock_timeout_s=0.2)

    assert keysets.load("app") == old


def test_rotation_without_a_file_rotates_the_keyset(
    keysets: KeyringKeysets, path: Path
) -> None:
    keysets.save("app", Keyset(OLD, {OLD: OLD_KEY}))

    result = rotate(path, "app", keysets)

    assert result.resealed is False
    assert result.file_key_id_before is None
    after = keysets.load("app")
    assert after is not None
    assert after.key_ids == (result.new_key_id,)


# -- describe --


def test_describe_tells_what_the_file_is_without_decrypting(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    old = Keyset(OLD, {OLD: OLD_KEY})
    make_store(sealed, keysets, old, old)

    info = describe(path, "app", keysets)

    assert info == {
        "path": str(path),
        "store_name": "app",
        "exists": True,
        "version": 1,
        "aead": "AES-256-GCM",
        "key_id": "0000aaaa",
        "size_bytes": 26 + len(PLAINTEXT) + 16,
        "file_error": None,
        "keyring_backend": "storage_fakes.MemoryKeyring (priority 1)",
        "keyring_key_ids": ["0000aaaa"],
        "keyring_primary_id": "0000aaaa",
        "keyring_has_key": True,
        "keyring_error": None,
    }


def test_describe_with_show_includes_the_plaintext(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    old = Keyset(OLD, {OLD: OLD_KEY})
    make_store(sealed, keysets, old, old)

    info = describe(path, "app", keysets, show=True)

    assert info["plaintext"] == PLAINTEXT.decode()


def test_describe_says_when_the_keyring_lacks_the_key(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    old = Keyset(OLD, {OLD: OLD_KEY})
    make_store(sealed, keysets, old, old)
    keysets.delete("app")

    info = describe(path, "app", keysets, show=True)

    assert info["keyring_has_key"] is False
    assert info["keyring_key_ids"] is None
    assert "plaintext" not in info


def test_describe_reports_a_damaged_file(
    keysets: KeyringKeysets, path: Path
) -> None:
    path.parent.mkdir()
    path.write_bytes(b"not a store")

    info = describe(path, "app", keysets)

    assert info["file_error"] == (
        "file is too short (11 bytes) to be a sealed store: truncated, "
        "or not a secure-store file"
    )
    assert info["size_bytes"] == 11
    assert info["keyring_has_key"] is None


def test_describe_reports_a_locked_keyring(
    sealed: SealedFile, keysets: KeyringKeysets, path: Path
) -> None:
    old = Keyset(OLD, {OLD: OLD_KEY})
    make_store(sealed, keysets, old, old)
    locked = KeyringKeysets(
        backend=RaisingKeyring(keyring.errors.KeyringLocked("locked"))
    )

    info = describe(path, "app", locked)

    assert info["keyring_error"].startswith("KeyringLockedError: ")
    assert info["keyring_has_key"] is None
    assert info["key_id"] == "0000aaaa"


def test_describe_of_a_missing_file(
    keysets: KeyringKeysets, path: Path
) -> None:
    info = describe(path, "app", keysets)

    assert info["exists"] is False
    assert info["key_id"] is None
    assert info["keyring_has_key"] is None


@pytest.mark.slow
def test_rotating_a_100k_point_store_takes_under_a_second(
    keysets: KeyringKeysets, path: Path
) -> None:
    from bench_storage import store_json

    plaintext = store_json(100_000)
    sealed = SealedFile(path, "app")
    sealed.write(plaintext, keysets.create("app"))

    result = rotate(path, "app", keysets)

    after = keysets.load("app")
    assert after is not None
    assert sealed.read(after) == plaintext
    assert 10_000_000 < len(plaintext) < 20_000_000
    assert result.duration_s < 1.0
