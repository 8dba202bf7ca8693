"""At rest: keysets in the OS keyring and the sealed store file."""

from __future__ import annotations

from secure_store.storage.keys import (
    KEYRING_SERVICE,
    KEYRING_TIMEOUT_S,
    KeyringKeysets,
    Keyset,
)
from secure_store.storage.rotation import RotationResult, describe, rotate
from secure_store.storage.sealed_file import (
    LOCK_TIMEOUT_S,
    FileHeader,
    OpenedStore,
    SealedFile,
    open_sealed,
    open_store,
    seal,
    write_store,
)

__all__ = [
    "KEYRING_SERVICE",
    "KEYRING_TIMEOUT_S",
    "LOCK_TIMEOUT_S",
    "FileHeader",
    "KeyringKeysets",
    "Keyset",
    "OpenedStore",
    "RotationResult",
    "SealedFile",
    "describe",
    "open_sealed",
    "open_store",
    "rotate",
    "seal",
    "write_store",
]
