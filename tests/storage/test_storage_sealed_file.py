"""The sealed store file: format, authentication, writes, lock, quarantine."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from secure_store.cleaninsights.clock import FrozenClock, use_clock
from secure_store.errors import (
    KeyMissingError,
    StorageError,
    StoreFileError,
    StoreLockedError,
)
from secure_store.storage.keys import Keyset
from secure_store.storage.sealed_file import (
    AEAD_CHACHA20_POLY1305,
    FileHeader,
    SealedFile,
)

KEY_ID = 0x0A0B0C0D
KEYSET = Keyset(KEY_ID, {KEY_ID: bytes(range(32))})
OTHER_KEYSET = Keyset(0x11111111, {0x11111111: bytes(32)})
PLAINTEXT = b'{"consents":{},"visits":[{"scene":"main/settings"}]}'
HEADER_BYTES = 26
TAG_BYTES = 16


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "stores" / "app.sealed"


@pytest.fixture
def sealed(store_path: Path) -> SealedFile:
    return SealedFile(store_path, "app", lock_timeout_s=0.3)


@pytest.fixture
def frozen() -> Iterator[FrozenClock]:
    instant = datetime(2026, 12, 4, 17, 5, 9, 123456, tzinfo=UTC)
    with use_clock(FrozenClock(instant)) as clock:
        assert isinstance(clock, FrozenClock)
        yield clock


def written(sealed: SealedFile, plaintext: bytes = PLAINTEXT) -> bytes:
    sealed.write(plaintext, KEYSET)
    return sealed.path.read_bytes()


# -- format --


def test_a_written_file_reads_back(sealed: SealedFile) -> None:
    sealed.write(PLAINTEXT, KEYSET)

    assert sealed.read(KEYSET) == PLAINTEXT


def test_the_file_starts_with_magic_version_aead_and_key_id(
    sealed: SealedFile,
) -> None:
    data = written(sealed)

    assert data[:8] == b"SECSTORE"
    assert data[8] == 1  # version
    assert data[9] == 1  # AES-256-GCM
    assert data[10:14] == bytes.fromhex("0a0b0c0d")
    assert len(data) == HEADER_BYTES + len(PLAINTEXT) + TAG_BYTES


def test_the_file_does_not_contain_the_plaintext(sealed: SealedFile) -> None:
    data = written(sealed)

    assert b"main/settings" not in data
    assert b"consents" not in data


def test_each_write_uses_a_fresh_nonce(sealed: SealedFile) -> None:
    first = written(sealed)
    second = written(sealed)

    assert first[14:26] != second[14:26]


def test_header_needs_no_key(sealed: SealedFile) -> None:
    written(sealed)

    assert sealed.header() == FileHeader(
        version=1,
        aead_id=1,
        key_id=KEY_ID,
        size=HEADER_BYTES + len(PLAINTEXT) + TAG_BYTES,
    )
    assert sealed.header().aead_name == "AES-256-GCM"


def test_a_chacha20_poly1305_file_reads_back(store_path: Path) -> None:
    chacha = SealedFile(store_path, "app", aead_id=AEAD_CHACHA20_POLY1305)
    chacha.write(PLAINTEXT, KEYSET)

    assert SealedFile(store_path, "app").read(KEYSET) == PLAINTEXT
    assert chacha.header().aead_name == "ChaCha20-Poly1305"


def test_exists_tells_whether_there_is_a_file(sealed: SealedFile) -> None:
    assert sealed.exists() is False
    written(sealed)
    assert sealed.exists() is True


def test_reading_a_missing_file_raises_file_not_found(
    sealed: SealedFile,
) -> None:
    with pytest.raises(FileNotFoundError):
        sealed.read(KEYSET)


# -- refusing what cannot be trusted --


@pytest.mark.parametrize(
    ("offset", "what"),
    [
        (0, "magic"),
        (8, "version"),
        (9, "aead id"),
        (14, "nonce"),
        (25, "nonce end"),
        (30, "ciphertext"),
        (-1, "tag"),
    ],
)
def test_one_changed_byte_is_refused(
    sealed: SealedFile, offset: int, what: str
) -> None:
    data = bytearray(written(sealed))
    data[offset] ^= 0x01
    sealed.path.write_bytes(bytes(data))

    with pytest.raises(StoreFileError):
        sealed.read(KEYSET)


def test_a_changed_key_id_is_a_missing_key(sealed: SealedFile) -> None:
    data = bytearray(written(sealed))
    data[13] ^= 0x01
    sealed.path.write_bytes(bytes(data))

    with pytest.raises(KeyMissingError, match="0a0b0c0c"):
        sealed.read(KEYSET)


def test_a_changed_key_id_with_that_key_present_fails_authentication(
    sealed: SealedFile,
) -> None:
    data = bytearray(written(sealed))
    data[13] ^= 0x01
    sealed.path.write_bytes(bytes(data))
    both = Keyset(KEY_ID, {KEY_ID: bytes(range(32)), 0x0A0B0C0C: bytes(32)})

    with pytest.raises(StoreFileError, match="fails authentication"):
        sealed.read(both)


@pytest.mark.parametrize("length", [0, 10, HEADER_BYTES, 41, 60])
def test_a_truncated_file_is_refused(sealed: SealedFile, length: int) -> None:
    data = written(sealed)
    sealed.path.write_bytes(data[:length])

    with pytest.raises(StoreFileError):
        sealed.read(KEYSET)


def test_a_file_sealed_for_another_store_name_is_refused(
    store_path: Path,
) -> None:
    SealedFile(store_path, "other-app").write(PLAINTEXT, KEYSET)

    with pytest.raises(StoreFileError, match="another store name"):
        SealedFile(store_path, "app").read(KEYSET)


def test_an_unknown_version_is_refused_by_name(sealed: SealedFile) -> None:
    data = bytearray(written(sealed))
    data[8] = 2
    sealed.path.write_bytes(bytes(data))

    with pytest.raises(StoreFileError, match="unknown sealed file version 2"):
        sealed.header()


def test_a_foreign_file_is_not_a_sealed_store(sealed: SealedFile) -> None:
    sealed.path.parent.mkdir()
    sealed.path.write_bytes(PLAINTEXT)

    with pytest.raises(StoreFileError, match="bad magic"):
        sealed.read(KEYSET)


def test_a_key_id_missing_from_the_keyset_is_a_missing_key(
    sealed: SealedFile,
) -> None:
    written(sealed)

    with pytest.raises(KeyMissingError, match="0a0b0c0d"):
        sealed.read(OTHER_KEYSET)


def test_errors_name_the_file(sealed: SealedFile) -> None:
    written(sealed)

    with pytest.raises(KeyMissingError, match=r"app\.sealed"):
        sealed.read(OTHER_KEYSET)


def test_a_refused_file_is_left_as_it_was(sealed: SealedFile) -> None:
    data = bytearray(written(sealed))
    data[-1] ^= 0x01
    sealed.path.write_bytes(bytes(data))

    with pytest.raises(StoreFileError):
        sealed.read(KEYSET)

    assert sealed.path.read_bytes() == bytes(data)


def test_write_refuses_to_replace_a_file_of_a_key_it_lacks(
    sealed: SealedFile,
) -> None:
    before = written(sealed)

    with pytest.raises(KeyMissingError, match="refusing to overwrite"):
        sealed.write(b"{}", OTHER_KEYSET)

    assert sealed.path.read_bytes() == before


def test_write_refuses_to_replace_a_file_with_a_damaged_header(
    sealed: SealedFile,
) -> None:
    sealed.path.parent.mkdir()
    sealed.path.write_bytes(b"junk" * 20)

    with pytest.raises(StoreFileError, match="quarantine it first"):
        sealed.write(PLAINTEXT, KEYSET)

    assert sealed.path.read_bytes() == b"junk" * 20


# -- permissions and durability --


def test_a_folder_that_cannot_be_made_is_a_storage_error(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    sealed = SealedFile(blocker / "app.sealed", "app")

    with pytest.raises(StorageError, match="is not a folder"):
        sealed.write(PLAINTEXT, KEYSET)


def test_a_folder_open_to_others_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    sealed = SealedFile(folder / "app.sealed", "app")

    sealed.write(PLAINTEXT, KEYSET)
    sealed.write(PLAINTEXT, KEYSET)

    warnings = [m for m in caplog.messages if "accessible to other" in m]
    assert warnings == [
        f"store folder {folder} is accessible to other users (mode 755); "
        "the sealed file stays 0600"
    ]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_the_folder_is_created_0700_and_the_file_0600(
    sealed: SealedFile,
) -> None:
    old_umask = os.umask(0o022)
    try:
        written(sealed)
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(sealed.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(sealed.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(sealed.lock_path.stat().st_mode) == 0o600


def test_the_temp_file_is_0600_and_complete_when_renamed(
    sealed: SealedFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int, bytes]] = []
    real_replace = os.replace

    def spy(source: str | Path, target: str | Path) -> None:
        path = Path(source)
        seen.append(
            (path.name, stat.S_IMODE(path.stat().st_mode), path.read_bytes())
        )
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", spy)
    old_umask = os.umask(0)
    try:
        data = written(sealed)
    finally:
        os.umask(old_umask)

    [(name, mode, content)] = seen
    assert name.startswith(".app.sealed.") and name.endswith(".tmp")
    assert mode == 0o600
    assert content == data


def test_a_write_fsyncs_the_file_and_the_folder(
    sealed: SealedFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(
            "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        )
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    written(sealed)

    assert synced == ["file", "folder"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    sealed: SealedFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = written(sealed)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageError, match="No space left") as caught:
        sealed.write(b"{}", KEYSET)

    assert isinstance(caught.value.__cause__, OSError)

    assert sealed.path.read_bytes() == before
    assert sorted(p.name for p in sealed.folder.iterdir()) == [
        "app.sealed",
        "app.sealed.lock",
    ]


def test_no_temp_file_remains_after_a_write(sealed: SealedFile) -> None:
    written(sealed)

    assert sorted(p.name for p in sealed.folder.iterdir()) == [
        "app.sealed",
        "app.sealed.lock",
    ]


def test_temp_files_left_by_a_crash_are_removed_on_open(
    sealed: SealedFile,
) -> None:
    written(sealed)
    leftover = sealed.folder / ".app.sealed.0123456789abcdef.tmp"
    leftover.write_bytes(b"half a write")
    unrelated = sealed.folder / ".other.sealed.0123456789abcdef.tmp"
    unrelated.write_bytes(b"not ours")

    sealed.read(KEYSET)

    assert not leftover.exists()
    assert unrelated.exists()


def test_temp_files_stay_while_another_writer_holds_the_lock(
    sealed: SealedFile, store_path: Path
) -> None:
    written(sealed)
    leftover = sealed.folder / ".app.sealed.0123456789abcdef.tmp"
    leftover.write_bytes(b"maybe a live write")
    other = SealedFile(store_path, "app")

    with other.locked():
        sealed.read(KEYSET)

    assert leftover.exists()


# -- lock --


def test_a_second_writer_gets_store_locked_after_the_timeout(
    sealed: SealedFile, store_path: Path
) -> None:
    holder = SealedFile(store_path, "app")

    with holder.locked(), pytest.raises(StoreLockedError, match=r"0\.3 s"):
        sealed.write(PLAINTEXT, KEYSET)


def test_a_second_writer_writes_once_the_lock_is_free(
    sealed: SealedFile, store_path: Path
) -> None:
    holder = SealedFile(store_path, "app")
    with holder.locked():
        pass

    sealed.write(PLAINTEXT, KEYSET)

    assert sealed.read(KEYSET) == PLAINTEXT


def test_write_inside_locked_does_not_wait_for_itself(
    sealed: SealedFile,
) -> None:
    with sealed.locked():
        sealed.write(PLAINTEXT, KEYSET)

    assert sealed.read(KEYSET) == PLAINTEXT


# -- quarantine --


def test_quarantine_renames_the_file_with_a_utc_timestamp(
    sealed: SealedFile, frozen: FrozenClock
) -> None:
    data = written(sealed)

    moved = sealed.quarantine("test")

    assert moved.name == "app.sealed.quarantined-20261204T170509.123456Z"
    assert moved.read_bytes() == data
    assert not sealed.exists()


def test_quarantine_never_overwrites_an_earlier_one(
    sealed: SealedFile, frozen: FrozenClock
) -> None:
    first_data = written(sealed, b"first")
    first = sealed.quarantine("test")
    second_data = written(sealed, b"second")

    second = sealed.quarantine("test")

    assert second.name == "app.sealed.quarantined-20261204T170509.123456Z-2"
    assert first.read_bytes() == first_data
    assert second.read_bytes() == second_data


def test_quarantine_warns_with_the_new_name_and_the_reason(
    sealed: SealedFile, frozen: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    written(sealed)
    caplog.set_level(logging.WARNING)

    moved = sealed.quarantine("the keyring lost its key")

    assert str(moved) in caplog.text
    assert "the keyring lost its key" in caplog.text


def test_a_quarantined_file_is_not_a_leftover(
    sealed: SealedFile, frozen: FrozenClock
) -> None:
    written(sealed)
    moved = sealed.quarantine("test")

    sealed.write(PLAINTEXT, KEYSET)
    sealed.read(KEYSET)

    assert moved.exists()
