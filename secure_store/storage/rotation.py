"""Key rotation of a sealed store, and what `secure-store inspect` shows."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_store.errors import (
    KeyMissingError,
    KeyringError,
    StoreFileError,
)
from secure_store.storage.keys import KeyringKeysets, Keyset
from secure_store.storage.sealed_file import (
    LOCK_TIMEOUT_S,
    SealedFile,
)

logger = logging.getLogger(__name__)


def _hex(key_ids: tuple[int, ...] | list[int]) -> str:
    return ", ".join(f"{key_id:08x}" for key_id in key_ids) or "none"


@dataclass(frozen=True)
class RotationResult:
    """What :func:`rotate` did; key ids only, never keys."""

    store_name: str
    path: Path
    key_ids_before: tuple[int, ...]
    """Key ids the keyring held for the store before."""
    file_key_id_before: int | None
    """The key id the file was sealed under before (None: no file)."""
    new_key_id: int
    """The only key left: the file is sealed under it."""
    created_key: bool
    """A fresh key was made (False when an interrupted run was finished)."""
    resealed: bool
    dropped_key_ids: tuple[int, ...]
    duration_s: float

    def summary(self) -> list[str]:
        """Lines telling a user what happened, for the CLI to print."""
        lines = [f"store {self.store_name!r} at {self.path}"]
        if not self.created_key:
            lines.append(
                "finished an interrupted rotation (no new key was needed)"
            )
        else:
            lines.append(f"added key {self.new_key_id:08x} as the primary")
        if self.resealed:
            lines.append(
                f"re-sealed the file: key {self.file_key_id_before:08x} "
                f"-> {self.new_key_id:08x}"
            )
        elif self.file_key_id_before is None:
            lines.append("no store file yet: nothing to re-seal")
        else:
            lines.append(
                f"the file was already sealed under {self.new_key_id:08x}"
            )
        lines.append(f"dropped key(s): {_hex(self.dropped_key_ids)}")
        lines.append(f"keyring now holds key {self.new_key_id:08x} only")
        lines.append(f"took {self.duration_s:.3f} s")
        return lines


def rotate(
    path: Path | str,
    store_name: str,
    keysets: KeyringKeysets,
    *,
    retire_all: bool = False,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
) -> RotationResult:
    """Rotate a store's key: add a new primary, re-seal, drop the old.

    Every step leaves a store that opens: the keyring gets the new key
    before the file is re-sealed under it, and the old key leaves only
    after the file no longer needs it. A run that finds an interrupted
    rotation (more than one key, or a primary the file is not yet sealed
    under) finishes that one instead of starting another, so rerunning a
    killed rotation leaves exactly one key. ``retire_all`` always makes a
    fresh key, even over an interrupted run, and drops every other. The
    whole run holds the store's write lock.

    Raises KeyMissingError when the keyring has no keyset for the store
    or lacks the file's key, StoreFileError for a file that cannot be
    opened, and the keyring and lock errors.
    """
    started = time.perf_counter()
    sealed = SealedFile(path, store_name, lock_timeout_s=lock_timeout_s)
    with sealed.locked():
        keyset = keysets.load(store_name)
        if keyset is None:
            raise KeyMissingError(
                f"the keyring holds no keyset for store {store_name!r}: "
                "nothing to rotate"
            )
        before = keyset.key_ids
        file_key_id = sealed.header().key_id if sealed.exists() else None
        if file_key_id is not None and file_key_id not in keyset.keys:
            raise KeyMissingError(
                f"{sealed.path} is sealed under key {file_key_id:08x}, "
                f"which the keyring does not hold (it holds {_hex(before)})"
            )

        interrupted = len(before) > 1 or (
            file_key_id is not None and file_key_id != keyset.primary_id
        )
        if interrupted and not retire_all:
            target = keyset
            logger.info("finishing an interrupted rotation of %r", store_name)
        else:
            target = keyset.with_new_primary()
            keysets.save(store_name, target)
            logger.info(
                "rotation of %r: added key %08x",
                store_name,
                target.primary_id,
            )

        resealed = False
        if file_key_id is not None and file_key_id != target.primary_id:
            sealed.write(sealed.read(target), target)
            resealed = True
            logger.info(
                "rotation of %r: re-sealed under %08x",
                store_name,
                target.primary_id,
            )

        final = target.retain_only([target.primary_id])
        if final.key_ids != target.key_ids:
            keysets.save(store_name, final)
    kept = set(final.keys)
    dropped = tuple(sorted((set(before) | set(target.keys)) - kept))
    result = RotationResult(
        store_name=store_name,
        path=sealed.path,
        key_ids_before=before,
        file_key_id_before=file_key_id,
        new_key_id=final.primary_id,
        created_key=target is not keyset,
        resealed=resealed,
        dropped_key_ids=dropped,
        duration_s=time.perf_counter() - started,
    )
    logger.info(
        "rotation of %r done: key %08x, dropped %s",
        store_name,
        final.primary_id,
        _hex(dropped),
    )
    return result


def describe(
    path: Path | str,
    store_name: str,
    keysets: KeyringKeysets,
    *,
    show: bool = False,
) -> dict[str, Any]:
    """Tell what a store file is, for ``secure-store inspect``.

    Reads only the header unless ``show`` is true. Never raises for a
    damaged file or an unreachable keyring: those are reported under
    ``file_error`` and ``keyring_error``. Key ids are 8-digit hex strings.
    With ``show`` and a key at hand, ``plaintext`` holds the store JSON
    text (or ``open_error`` says why it could not be opened).
    """
    sealed = SealedFile(path, store_name)
    info: dict[str, Any] = {
        "path": str(sealed.path),
        "store_name": store_name,
        "exists": sealed.exists(),
        "version": None,
        "aead": None,
        "key_id": None,
        "size_bytes": None,
        "file_error": None,
        "keyring_backend": None,
        "keyring_key_ids": None,
        "keyring_primary_id": None,
        "keyring_has_key": None,
        "keyring_error": None,
    }
    header = None
    if info["exists"]:
        try:
            header = sealed.header()
        except StoreFileError as exc:
            info["file_error"] = str(exc)
            info["size_bytes"] = sealed.path.stat().st_size
        else:
            info.update(
                version=header.version,
                aead=header.aead_name,
                key_id=f"{header.key_id:08x}",
                size_bytes=header.size,
            )

    keyset: Keyset | None = None
    try:
        info["keyring_backend"] = keysets.backend_name
        keyset = keysets.load(store_name)
    except KeyringError as exc:
        info["keyring_error"] = f"{type(exc).__name__}: {exc}"
    if keyset is not None:
        info["keyring_key_ids"] = [f"{k:08x}" for k in keyset.key_ids]
        info["keyring_primary_id"] = f"{keyset.primary_id:08x}"
        if header is not None:
            info["keyring_has_key"] = header.key_id in keyset.keys
    elif info["keyring_error"] is None and header is not None:
        info["keyring_has_key"] = False

    if show and keyset is not None and header is not None:
        try:
            info["plaintext"] = sealed.read(keyset).decode("utf-8")
        except (StoreFileError, KeyMissingError, UnicodeDecodeError) as exc:
            info["open_error"] = str(exc)
    return info
