"""The sealed store file: format, atomic durable writes, lock, quarantine."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock

try:
    import fcntl
except ImportError:  # Windows: filelock instead
    fcntl = None  # type: ignore[assignment]
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import (
    AESGCM,
    ChaCha20Poly1305,
)

from secure_store.cleaninsights import clock
from secure_store.errors import (
    KeyMissingError,
    StorageError,
    StoreFileError,
    StoreLockedError,
)
from secure_store.storage.keys import KeyringKeysets, Keyset

logger = logging.getLogger(__name__)

# Format version 1: ``magic (8) | version (1) | aead id (1) | key id (4,
# big-endian) | nonce (12) | ciphertext and 16-byte tag``. The whole header
# and the UTF-8 store name are the AEAD's associated data, so a file can be
# neither moved to another store nor have its header edited unnoticed.
MAGIC = b"SECSTORE"
FORMAT_VERSION = 1
AEAD_AES_256_GCM = 1
AEAD_CHACHA20_POLY1305 = 2
AEAD_NAMES = {
    AEAD_AES_256_GCM: "AES-256-GCM",
    AEAD_CHACHA20_POLY1305: "ChaCha20-Poly1305",
}
# AES-256-GCM seals a 15 MB store in 1.6 ms, ChaCha20-Poly1305 in 5.2 ms
# (x86-64 with AES-NI, cryptography 50); both are read. On CPUs without
# AES instructions ChaCha20-Poly1305 is the faster one: pass aead_id.
DEFAULT_AEAD_ID = AEAD_AES_256_GCM
NONCE_BYTES = 12
TAG_BYTES = 16
_HEADER = struct.Struct(f">{len(MAGIC)}sBBI{NONCE_BYTES}s")
HEADER_BYTES = _HEADER.size
# Far above any real store (100k data points seal to about 15 MB); stops a
# stray huge file from being read into memory whole.
MAX_STORE_BYTES = 1 << 30
LOCK_TIMEOUT_S = 10.0
FOLDER_MODE = 0o700
FILE_MODE = 0o600
TEMP_SUFFIX = ".tmp"
# A new file only (never an existing one or a symlink planted in the
# folder), not inherited by child processes, binary on Windows.
_TEMP_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_BINARY", 0)
)
QUARANTINE_MARK = ".quarantined-"
# How often a waiting writer tries the lock again.
LOCK_POLL_S = 0.01
LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class FileHeader:
    """What a sealed file says about itself, readable without a key."""

    version: int
    aead_id: int
    key_id: int
    size: int

    @property
    def aead_name(self) -> str:
        """The AEAD's name, such as ``AES-256-GCM``."""
        return AEAD_NAMES.get(self.aead_id, f"unknown ({self.aead_id})")


def _aead(aead_id: int, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if aead_id == AEAD_AES_256_GCM:
        return AESGCM(key)
    if aead_id == AEAD_CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise StoreFileError(f"unknown AEAD id {aead_id}")


def _associated_data(header: bytes, store_name: str) -> bytes:
    # The header has a fixed length, so header + name is unambiguous.
    return header + store_name.encode("utf-8")


def parse_header(data: bytes, size: int) -> FileHeader:
    """Read the header at the start of ``data`` (file of ``size`` bytes)."""
    if size < HEADER_BYTES + TAG_BYTES or len(data) < HEADER_BYTES:
        raise StoreFileError(
            f"file is too short ({size} bytes) to be a sealed store: "
            "truncated, or not a secure-store file"
        )
    magic, version, aead_id, key_id, _nonce = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StoreFileError("not a secure-store sealed file (bad magic)")
    if version != FORMAT_VERSION:
        raise StoreFileError(
            f"unknown sealed file version {version} (this secure-store "
            f"reads version {FORMAT_VERSION})"
        )
    if aead_id not in AEAD_NAMES:
        raise StoreFileError(f"unknown AEAD id {aead_id} in the header")
    return FileHeader(version, aead_id, key_id, size)


def seal(
    plaintext: bytes,
    keyset: Keyset,
    store_name: str,
    *,
    aead_id: int = DEFAULT_AEAD_ID,
) -> bytearray:
    """Return the sealed file bytes for ``plaintext`` under the primary."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    header = _HEADER.pack(
        MAGIC, FORMAT_VERSION, aead_id, keyset.primary_id, nonce
    )
    aead = _aead(aead_id, keyset.primary_key)
    # Sealing straight into the file's buffer, behind the header, saves
    # a copy of the whole file: for 100,000 points (14 MB) the seal took
    # 1.3 ms instead of 15 ms, and half the memory.
    sealed = bytearray(HEADER_BYTES + len(plaintext) + TAG_BYTES)
    sealed[:HEADER_BYTES] = header
    aead.encrypt_into(
        nonce,
        plaintext,
        _associated_data(header, store_name),
        memoryview(sealed)[HEADER_BYTES:],
    )
    return sealed


def open_sealed(data: bytes, keyset: Keyset, store_name: str) -> bytes:
    """Return the plaintext of sealed file bytes ``data``.

    Raises StoreFileError for a damaged, foreign or unknown file and
    KeyMissingError when the keyset lacks the header's key id.
    """
    header = parse_header(data, len(data))
    key = keyset.keys.get(header.key_id)
    if key is None:
        held = ", ".join(f"{key_id:08x}" for key_id in keyset.key_ids)
        raise KeyMissingError(
            f"the file is sealed under key {header.key_id:08x}, which the "
            f"store's keyset does not hold (it holds {held})"
        )
    nonce = data[HEADER_BYTES - NONCE_BYTES : HEADER_BYTES]
    aead = _aead(header.aead_id, key)
    try:
        # A view, not a slice: slicing would copy the whole ciphertext.
        return aead.decrypt(
            nonce,
            memoryview(data)[HEADER_BYTES:],
            _associated_data(data[:HEADER_BYTES], store_name),
        )
    except InvalidTag:
        raise StoreFileError(
            "the file fails authentication: it is damaged, was edited, "
            "or was sealed for another store name"
        ) from None


@contextlib.contextmanager
def _os_errors(what: str, *, keep_missing: bool = False) -> Iterator[None]:
    """Turn OSError into StorageError (the cause kept), for one step."""
    try:
        yield
    except OSError as exc:
        if keep_missing and isinstance(exc, FileNotFoundError):
            raise
        raise StorageError(f"could not {what}: {exc}") from exc


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows cannot)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FlockLock:
    """An exclusive ``flock`` on a lock file, re-entrant in this process.

    filelock opens, locks and closes the lock file on every acquisition
    (~90 us here); a small store's persist took the lock twice. This keeps
    the lock file open for the object's life and only flocks it: a few
    microseconds. Threads of this process take turns through an RLock;
    other processes are kept out by the flock. The file is never unlinked,
    so a waiter can never lock a name that the holder has just removed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = 0

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting at most ``timeout`` s (filelock.Timeout)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        if not self._threads.acquire(timeout=max(timeout, 0.0)):
            raise filelock.Timeout(str(self.path))
        if self._depth > 0:
            self._depth += 1
            return
        try:
            fd = self._open()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise filelock.Timeout(str(self.path)) from None
                    time.sleep(LOCK_POLL_S)
        except BaseException:
            self._threads.release()
            raise
        self._depth = 1

    def release(self) -> None:
        """Give the lock back (the flock with the outermost release)."""
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def _open(self) -> int:
        # A forked child shares the parent's open file, and so its flock:
        # it must open its own.
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
            )
            self._pid = os.getpid()
        return self._fd

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)


class SealedFile:
    """One store's sealed file and its write lock.

    Writes go to a temp file in the same folder (mode 0600 from creation),
    are fsynced, renamed over the file and the folder fsynced, all under a
    lock file (``<name>.lock``) so one writer at a time; readers never see
    a half-written file. A second writer waits up to ``lock_timeout_s``
    and then gets :class:`StoreLockedError`.
    """

    def __init__(
        self,
        path: Path | str,
        store_name: str,
        *,
        lock_timeout_s: float = LOCK_TIMEOUT_S,
        aead_id: int = DEFAULT_AEAD_ID,
    ) -> None:
        if aead_id not in AEAD_NAMES:
            raise ValueError(f"unknown AEAD id {aead_id}")
        self.path = Path(path)
        self.store_name = store_name
        self.lock_timeout_s = lock_timeout_s
        self.aead_id = aead_id
        self.lock_path = self.path.with_name(self.path.name + LOCK_SUFFIX)
        self._warned_folder = False
        self._lock: _FlockLock | filelock.FileLock
        if fcntl is not None:
            self._lock = _FlockLock(self.lock_path)
        else:  # Windows
            self._lock = filelock.FileLock(
                self.lock_path,
                timeout=lock_timeout_s,
                mode=FILE_MODE,
                # Keeping the lock file avoids a race where a waiter locks
                # a path that the releasing holder has just unlinked.
                preserve_lock_file=True,
            )

    @property
    def folder(self) -> Path:
        """The folder holding the file, its lock and its temp files."""
        return self.path.parent

    def exists(self) -> bool:
        """Whether the sealed file exists."""
        return self.path.exists()

    # -- locking

    def ensure_folder(self) -> None:
        """Create the folder 0700; warn if an existing one is open to others.

        An existing folder is not chmod-ed: it may be the user's own
        folder, chosen on purpose.
        """
        try:
            os.mkdir(self.folder, FOLDER_MODE)
        except FileExistsError:
            status = self.folder.stat()
            if not stat.S_ISDIR(status.st_mode):
                raise StorageError(
                    f"{self.folder} should be the store's folder but is "
                    "not a folder"
                ) from None
            mode = stat.S_IMODE(status.st_mode)
            if mode & 0o077 and not self._warned_folder:
                self._warned_folder = True
                logger.warning(
                    "store folder %s is accessible to other users "
                    "(mode %o); the sealed file stays 0600",
                    self.folder,
                    mode,
                )
            return
        except FileNotFoundError:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(self.folder, FOLDER_MODE)
        # mkdir's mode is filtered by the umask; make it exactly 0700.
        os.chmod(self.folder, FOLDER_MODE)

    @contextlib.contextmanager
    def locked(self, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the store's write lock (re-entrant per object and thread).

        Use it to make a read-modify-write atomic, for example reloading the
        keyset and writing under one lock; :meth:`write` inside it does not
        wait again.
        """
        wait_s = self.lock_timeout_s if timeout_s is None else timeout_s
        with _os_errors(f"lock {self.lock_path}"):
            self.ensure_folder()
            try:
                self._lock.acquire(timeout=wait_s)
            except filelock.Timeout:  # an OSError: handled before the rest
                raise StoreLockedError(
                    f"store {self.path} is being written by another "
                    f"process; gave up waiting for its lock after "
                    f"{wait_s:g} s"
                ) from None
        try:
            yield
        finally:
            self._lock.release()

    # -- reading

    def header(self) -> FileHeader:
        """Return the file's header; needs no key.

        Raises StoreFileError when the header is damaged or unknown,
        FileNotFoundError when there is no file and StorageError when it
        cannot be read.
        """
        with (
            _os_errors(f"read {self.path}", keep_missing=True),
            open(self.path, "rb") as file,
        ):
            size = os.fstat(file.fileno()).st_size
            return parse_header(file.read(HEADER_BYTES), size)

    def read(self, keyset: Keyset) -> bytes:
        """Return the plaintext; removes temp files left by a crash first.

        Raises StoreFileError (damaged, foreign, unknown version),
        KeyMissingError (the header's key id is not in ``keyset``),
        FileNotFoundError (no file) and StorageError (unreadable).
        """
        self._remove_leftovers_if_idle()
        with (
            _os_errors(f"read {self.path}", keep_missing=True),
            open(self.path, "rb") as file,
        ):
            size = os.fstat(file.fileno()).st_size
            if size > MAX_STORE_BYTES:
                raise StoreFileError(
                    f"{self.path} is {size} bytes, more than the "
                    f"{MAX_STORE_BYTES} a sealed store may have"
                )
            data = file.read()
        try:
            plaintext = open_sealed(data, keyset, self.store_name)
        except (StoreFileError, KeyMissingError) as exc:
            raise type(exc)(f"cannot open {self.path}: {exc}") from None
        logger.debug(
            "opened %s: %d bytes sealed, %d plain",
            self.path,
            len(data),
            len(plaintext),
        )
        return plaintext

    # -- writing

    def write(self, plaintext: bytes, keyset: Keyset) -> None:
        """Seal ``plaintext`` under the primary key; atomic and durable.

        Refuses to replace a file that ``keyset`` could not open: a damaged
        header raises StoreFileError, a key id missing from ``keyset``
        raises KeyMissingError. The second case means another process
        rotated the key since ``keyset`` was loaded; reload it from the
        keyring (under :meth:`locked`) and write again.
        """
        sealed = seal(plaintext, keyset, self.store_name, aead_id=self.aead_id)
        with self.locked(), _os_errors(f"write {self.path}"):
            self._check_replaceable(keyset)
            self._remove_leftovers()
            temp = self.folder / (
                f".{self.path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}"
            )
            fd = os.open(temp, _TEMP_FLAGS, FILE_MODE)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(sealed)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            _fsync_folder(self.folder)
        logger.debug(
            "sealed %d bytes into %s under key %08x",
            len(plaintext),
            self.path,
            keyset.primary_id,
        )

    def _check_replaceable(self, keyset: Keyset) -> None:
        try:
            current = self.header()
        except FileNotFoundError:
            return
        except StoreFileError as exc:
            raise StoreFileError(
                f"refusing to overwrite {self.path}: {exc}; quarantine it "
                "first"
            ) from None
        if current.key_id not in keyset.keys:
            raise KeyMissingError(
                f"refusing to overwrite {self.path}: it is sealed under key "
                f"{current.key_id:08x}, which this keyset does not hold "
                "(was the key rotated by another process?)"
            )

    # -- leftovers and quarantine

    def _leftovers(self) -> list[Path]:
        prefix = f".{self.path.name}."
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return [
            self.folder / name
            for name in names
            if name.startswith(prefix) and name.endswith(TEMP_SUFFIX)
        ]

    def _remove_leftovers(self) -> int:
        """Delete temp files of interrupted writes; the lock must be held."""
        removed = 0
        for leftover in self._leftovers():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        if removed:
            logger.info(
                "removed %d temp file(s) left by an interrupted write of %s",
                removed,
                self.path,
            )
        return removed

    def _remove_leftovers_if_idle(self) -> None:
        # A temp file may belong to a writer that is alive right now; only
        # whoever holds the lock may call it a leftover.
        if not self._leftovers():
            return
        try:
            with self.locked(timeout_s=0):
                self._remove_leftovers()
        except StoreLockedError:
            logger.debug("store is being written; leftovers stay for now")
        except OSError as exc:
            logger.warning("could not remove leftover temp files: %s", exc)

    def remove_leftovers(self) -> int:
        """Delete temp files left by a crash; returns how many."""
        with self.locked(), _os_errors(f"clean up {self.folder}"):
            return self._remove_leftovers()

    def quarantine(self, reason: str) -> Path:
        """Rename the file aside with a UTC timestamp and return its path.

        Nothing is overwritten: if the name is taken, a counter is added.
        The warning names the new path and ``reason``.
        """
        stamp = clock.now().strftime("%Y%m%dT%H%M%S.%fZ")
        base = f"{self.path.name}{QUARANTINE_MARK}{stamp}"
        with self.locked(), _os_errors(f"quarantine {self.path}"):
            target = self._move_aside(base)
            _fsync_folder(self.folder)
        logger.warning(
            "quarantined store file %s as %s: %s", self.path, target, reason
        )
        return target

    def _move_aside(self, base: str) -> Path:
        for attempt in range(1, 1000):
            name = base if attempt == 1 else f"{base}-{attempt}"
            target = self.folder / name
            try:
                # link() fails on an existing target, where rename() would
                # silently replace it.
                os.link(self.path, target)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                    raise
                if target.exists():
                    continue
                os.rename(self.path, target)  # no hard links here
                return target
            os.unlink(self.path)
            return target
        raise StoreFileError(f"no free quarantine name for {self.path}")


@dataclass(frozen=True)
class OpenedStore:
    """What :func:`open_store` found: a keyset, and data or a fresh start."""

    keyset: Keyset
    plaintext: bytes | None
    """The store's plaintext, or None to start an empty store."""
    quarantined: Path | None = None
    """Where an unreadable file was moved, if one was."""
    reason: str | None = None
    """Why it was moved."""


def open_store(sealed: SealedFile, keysets: KeyringKeysets) -> OpenedStore:
    """Open a store the way a loading app should, under the write lock.

    - No file: use the keyring's keyset, or create one; start empty.
    - A file and its key: return the plaintext.
    - A file that cannot be opened (no keyset or a damaged one in the
      keyring, its key id missing, damage, foreign store, unknown
      version): quarantine it, keep or create a keyset, start empty.
    - A keyring that is locked or unreachable is not a lost key:
      KeyringLockedError / KeyringUnavailableError propagate and nothing
      is touched. StoreLockedError when another writer holds the lock.
    """
    name = sealed.store_name
    with sealed.locked():
        try:
            keyset = keysets.load(name)
            lost = "the keyring holds no keyset for this store (lost key)"
        except KeyMissingError as exc:
            keyset, lost = None, str(exc)

        if not sealed.exists():
            sealed.remove_leftovers()
            if keyset is None:
                keyset = keysets.create(name)
            return OpenedStore(keyset, None)

        if keyset is None:
            moved = sealed.quarantine(lost)
            return OpenedStore(keysets.create(name), None, moved, lost)

        try:
            plaintext = sealed.read(keyset)
        except (StoreFileError, KeyMissingError) as exc:
            moved = sealed.quarantine(str(exc))
            return OpenedStore(keyset, None, moved, str(exc))
        return OpenedStore(keyset, plaintext)


def write_store(
    sealed: SealedFile, keysets: KeyringKeysets, plaintext: bytes
) -> Keyset:
    """Seal ``plaintext`` under the keyring's current primary key.

    The keyset is read from the keyring under the write lock, so a
    rotation done meanwhile by another process (``secure-store
    rotate-key``) is followed, never undone. Raises KeyMissingError, and
    writes nothing, when the keyring no longer holds a keyset for the
    store: a file sealed under a key nobody keeps would be lost. Returns
    the keyset used.
    """
    with sealed.locked():
        keyset = keysets.load(sealed.store_name)
        if keyset is None:
            raise KeyMissingError(
                f"the keyring no longer holds a keyset for store "
                f"{sealed.store_name!r}; not writing a file that nothing "
                "could open"
            )
        sealed.write(plaintext, keyset)
    return keyset
