"""open_store(): the load policy (create, open, quarantine, stay put)."""

from __future__ import annotations

from pathlib import Path

import keyring.errors
import pytest
from storage_fakes import MemoryKeyring, RaisingKeyring

from secure_store.errors import (
    KeyMissingError,
    KeyringLockedError,
    KeyringUnavailableError,
)
from secure_store.storage import (
    KeyringKeysets,
    SealedFile,
    open_store,
    rotate,
    write_store,
)

PLAINTEXT = b'{"visits":[{"scene":"main/settings"}]}'


@pytest.fixture
def backend() -> MemoryKeyring:
    return MemoryKeyring()


@pytest.fixture
def keysets(backend: MemoryKeyring) -> KeyringKeysets:
    return KeyringKeysets(backend=backend)


@pytest.fixture
def sealed(tmp_path: Path) -> SealedFile:
    return SealedFile(tmp_path / "store" / "app.sealed", "app")


def folder_names(sealed: SealedFile) -> list[str]:
    return sorted(p.name for p in sealed.folder.iterdir())


def test_a_new_store_gets_a_keyset_and_starts_empty(
    sealed: SealedFile, keysets: KeyringKeysets
) -> None:
    opened = open_store(sealed, keysets)

    assert opened.plaintext is None
    assert opened.quarantined is None
    assert keysets.load("app") == opened.keyset


def test_an_existing_store_opens_with_its_key(
    sealed: SealedFile, keysets: KeyringKeysets
) -> None:
    keyset = keysets.create("app")
    sealed.write(PLAINTEXT, keyset)

    opened = open_store(sealed, keysets)

    assert opened.plaintext == PLAINTEXT
    assert opened.keyset == keyset
    assert opened.quarantined is None


def test_a_lost_key_quarantines_the_file_and_starts_a_new_store(
    sealed: SealedFile, keysets: KeyringKeysets
) -> None:
    old = keysets.create("app")
    sealed.write(PLAINTEXT, old)
    data = sealed.path.read_bytes()
    keysets.delete("app")

    opened = open_store(sealed, keysets)

    assert opened.plaintext is None
    assert opened.quarantined is not None
    assert opened.quarantined.read_bytes() == data
    assert "lost key" in (opened.reason or "")
    assert opened.keyset != old
    assert keysets.load("app") == opened.keyset
    assert not sealed.exists()


def test_a_new_store_after_a_lost_key_persists_and_reopens(
    sealed: SealedFile, keysets: KeyringKeysets
) -> None:
    sealed.write(PLAINTEXT, keysets.create("app"))
    keysets.delete("app")
    fresh = open_store(sealed, keysets)

    sealed.write(b"{}", fresh.keyset)

    assert open_store(sealed, keysets).plaintext == b"{}"


def test_a_damaged_file_is_quarantined_and_the_keyset_kept(
    sealed: SealedFile, keysets: KeyringKeysets
) -> None:
    keyset = keysets.create("app")
    sealed.write(PLAINTEXT, keyset)
    data = bytearray(sealed.path.read_bytes())
    data[-1] ^= 0x80
    sealed.path.write_bytes(bytes(data))

    opened = open_store(sealed, keysets)

    assert opened.plaintext is None
    assert opened.keyset == keyset
    assert opened.quarantined is not None
    assert opened.quarantined.read_bytes() == bytes(data)
    assert "fails authentication" in (opened.reason or "")


def test_a_damaged_keyring_entry_quarantines_and_replaces_it(
    sealed: SealedFile, keysets: KeyringKeysets, backend: MemoryKeyring
) -> None:
    sealed.write(PLAINTEXT, keysets.create("app"))
    backend.entries[("secure-store", "app")] = "{damaged"

    opened = open_store(sealed, keysets)

    assert opened.plaintext is None
    assert opened.quarantined is not None
    assert "damaged" in (opened.reason or "")
    assert keysets.load("app") == opened.keyset


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (keyring.errors.KeyringLocked("locked"), KeyringLockedError),
        (keyring.errors.NoKeyringError("none"), KeyringUnavailableError),
    ],
)
def test_a_locked_or_missing_keyring_leaves_the_store_untouched(
    sealed: SealedFile,
    keysets: KeyringKeysets,
    error: Exception,
    expected: type[Exception],
) -> None:
    sealed.write(PLAINTEXT, keysets.create("app"))
    data = sealed.path.read_bytes()
    names = folder_names(sealed)

    with pytest.raises(expected):
        open_store(sealed, KeyringKeysets(backend=RaisingKeyring(error)))

    assert sealed.path.read_bytes() == data
    assert folder_names(sealed) == names


def test_open_removes_temp_files_left_by_a_crash(
    sealed: SealedFile, keysets: KeyringKeysets
) -> None:
    sealed.write(PLAINTEXT, keysets.create("app"))
    (sealed.folder / ".app.sealed.00ff00ff00ff00ff.tmp").write_bytes(b"x")

    open_store(sealed, keysets)

    assert folder_names(sealed) == ["app.sealed", "app.sealed.lock"]


# -- write_store --


def test_write_store_seals_under_the_keyrings_primary(
    sealed: SealedFile, keysets: KeyringKeysets
) -> None:
    keyset = keysets.create("app")

    used = write_store(sealed, keysets, PLAINTEXT)

    assert used == keyset
    assert sealed.read(keyset) == PLAINTEXT


def test_write_store_follows_a_rotation_done_meanwhile(
    sealed: SealedFile, keysets: KeyringKeysets
) -> None:
    opened = open_store(sealed, keysets)
    sealed.write(PLAINTEXT, opened.keyset)
    rotated = rotate(sealed.path, "app", keysets)

    used = write_store(sealed, keysets, b"{}")

    assert used.primary_id == rotated.new_key_id
    assert sealed.header().key_id == rotated.new_key_id


def test_write_store_without_a_keyset_writes_nothing(
    sealed: SealedFile, keysets: KeyringKeysets
) -> None:
    sealed.write(PLAINTEXT, keysets.create("app"))
    data = sealed.path.read_bytes()
    keysets.delete("app")

    with pytest.raises(KeyMissingError, match="no longer holds"):
        write_store(sealed, keysets, b"{}")

    assert sealed.path.read_bytes() == data
