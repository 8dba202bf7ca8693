"""SecureStore: a Clean Insights Store sealed at rest and sent through Tor."""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import keyring.backend
import platformdirs

from .cleaninsights.store import Store
from .errors import (
    ConfigurationError,
    InsecureKeyringError,
    KeyConfigError,
    KeyMissingError,
    KeyringLockedError,
    KeyringUnavailableError,
    SecureStoreError,
    StorageError,
    StoreConflictError,
    StoreFileError,
)
from .storage.keys import KeyringKeysets, Keyset
from .storage.sealed_file import SealedFile, open_store, write_store
from .transport import envelope
from .transport.proxy import (
    DEFAULT_PROXY_URL,
    check_server_url,
    parse_proxy_url,
)
from .transport.sender import Sender

__all__ = ["DEFAULT_STORE_NAME", "SecureStore"]

log = logging.getLogger(__name__)

Done = Callable[[Exception | None], None]

DEFAULT_STORE_NAME = "default"
STORE_SUFFIX = ".sstore"
# The name is a keyring user name and part of a file name: keep it plain.
STORE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Our own keys in the store JSON, beside the Clean Insights ones.
SECURE_STORE_KEY = "secureStore"
PENDING_REPORT_KEY = "pendingReport"
# A send longer than a day is a mistake, and larger values overflow time_t.
MAX_SEND_TIMEOUT_S = 86_400.0
# How often a store whose keyring was locked asks it again, on persist.
KEYRING_RETRY_INTERVAL_S = 30.0


def default_store_path(name: str) -> Path:
    """Return where a store called ``name`` lives when no path is given."""
    folder = platformdirs.user_data_path("secure-store", appauthor=False)
    return folder / f"{name}{STORE_SUFFIX}"


def store_name_for(path: Path) -> str:
    """Return the store name a store file at ``path`` is sealed under."""
    name = path.name
    if name.endswith(STORE_SUFFIX):
        name = name[: -len(STORE_SUFFIX)]
    return name


def _finite_seconds(timeout: float) -> float:
    """Return ``timeout`` as positive finite seconds, or raise."""
    try:
        seconds = float(timeout)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"timeout must be a number of seconds, not {timeout!r}"
        ) from exc
    if not 0 < seconds <= MAX_SEND_TIMEOUT_S:
        raise ConfigurationError(
            f"timeout must be more than 0 and at most "
            f"{MAX_SEND_TIMEOUT_S:g} seconds, not {timeout!r}"
        )
    return seconds


def call_done(done: Done, error: Exception | None) -> None:
    """Call a ``done`` callback; what it raises is logged, never passed on."""
    try:
        done(error)
    except Exception:
        log.exception("a done callback raised; ignored")


class _PendingReport:
    """A report that was sent but not yet acknowledged by the gateway."""

    def __init__(self, report_id: bytes, payload: str) -> None:
        self.report_id = report_id
        self.payload = payload

    def to_dict(self) -> dict[str, str]:
        return {"id": self.report_id.hex(), "payload": self.payload}

    @classmethod
    def from_dict(cls, data: Any) -> _PendingReport | None:
        if not isinstance(data, dict):
            return None
        report_id, payload = data.get("id"), data.get("payload")
        if not isinstance(report_id, str) or not isinstance(payload, str):
            return None
        try:
            raw_id = bytes.fromhex(report_id)
        except ValueError:
            return None
        if len(raw_id) != envelope.REPORT_ID_BYTES:
            return None
        return cls(raw_id, payload)


# An asynchronous persist waits until this long after the previous write
# began, so a burst of persists becomes a few writes, not one per call.
# Synchronous persists, sends, close() and exit write at once.
MIN_WRITE_INTERVAL_S = 0.5
# The writer thread waits this long for more work before it ends, so
# persists a few seconds apart do not each start a thread.
WRITER_IDLE_S = 5.0

#: Makes the bytes of a snapshot; called on the thread that writes them.
Snapshot = Callable[[], bytes]


class _PersistWorker:
    """One background writer; a newer snapshot replaces a queued one.

    Snapshots carry a sequence number taken when they were made, so an
    older snapshot never overwrites a newer one on disk. Every ``done``
    handed in is called exactly once, after the write that carried its
    snapshot or a newer one.
    """

    def __init__(
        self,
        write: Callable[[bytes], None],
        on_result: Callable[[Exception | None], None],
    ) -> None:
        self._write = write
        self._on_result = on_result
        self._cond = threading.Condition()
        self._queued: tuple[int, Snapshot] | None = None
        self._waiting: list[Done] = []
        self._written_seq = -1
        self._busy = False
        self._stopped = False
        self._last_write = -MIN_WRITE_INTERVAL_S
        self._thread: threading.Thread | None = None

    def submit(self, seq: int, snapshot: Snapshot, done: Done) -> None:
        """Queue ``snapshot`` for the background writer."""
        with self._cond:
            self._queue(seq, snapshot)
            self._waiting.append(done)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="secure-store-persist", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def write_now(self, seq: int, snapshot: Snapshot, done: Done) -> None:
        """Write ``snapshot`` (or a newer queued one) on this thread."""
        with self._cond:
            self._queue(seq, snapshot)
            self._waiting.append(done)
        self.flush()

    def flush(self) -> None:
        """Write whatever is queued now, on the caller's thread."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            if self._queued is None:
                return
            self._busy = True
            (seq, snapshot), self._queued = self._queued, None
            waiting, self._waiting = self._waiting, []
        self._write_and_report(seq, snapshot, waiting)

    def stop(self) -> None:
        """Write what is queued now, then let the writer thread end."""
        self.flush()
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _queue(self, seq: int, snapshot: Snapshot) -> None:
        if self._queued is None or self._queued[0] < seq:
            self._queued = (seq, snapshot)

    def _next(self) -> tuple[int, Snapshot, list[Done]] | None:
        """Wait (condition held) for a due snapshot; None: end the thread."""
        idle_until = time.monotonic() + WRITER_IDLE_S
        while True:
            now = time.monotonic()
            due_at = self._last_write + MIN_WRITE_INTERVAL_S
            if self._busy:
                self._cond.wait()
            elif self._queued is None:
                if self._stopped or now >= idle_until:
                    return None
                self._cond.wait(idle_until - now)
            elif now < due_at and not self._stopped:
                self._cond.wait(due_at - now)
            else:
                self._busy = True
                (seq, snapshot), self._queued = self._queued, None
                waiting, self._waiting = self._waiting, []
                return seq, snapshot, waiting

    def _run(self) -> None:
        while True:
            with self._cond:
                due = self._next()
                if due is None:
                    self._thread = None
                    return
            self._write_and_report(*due)

    def _write_and_report(
        self, seq: int, snapshot: Snapshot, waiting: list[Done]
    ) -> None:
        error: Exception | None = None
        try:
            if seq > self._written_seq:
                self._last_write = time.monotonic()
                self._write(snapshot())
                self._written_seq = seq
        except Exception as exc:
            error = exc
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        self._on_result(error)
        for done in waiting:
            call_done(done, error)


class SecureStore(Store):
    """A Clean Insights store sealed at rest, sent sealed through a proxy.

    At rest the store JSON is sealed with a key from the OS keyring; in
    transit each report is sealed to the gateway's pinned key config with
    HPKE and POSTed through a SOCKS5 proxy (Tor by default) that resolves
    the server's name itself. It never connects directly.

    Args:
        debug: called with debug messages, as for any ``Store``.
        name: the store's name: its keyring entry and what the file is
            sealed under. Default: the file name of ``path`` without
            ``.sstore``, else ``"default"``.
        path: the sealed store file; default ``NAME.sstore`` under the
            user's data folder.
        proxy_url: ``socks5h://`` URL of the proxy.
        gateway_key_config: the gateway's key config, as base64 text or a
            path to a file holding it. Without one, ``send`` fails.
        keyring_backend: a ``keyring`` backend instance; default: the one
            ``keyring`` picks for this machine.
        allow_insecure_keyring: accept a backend that keeps secrets in
            plaintext (tests, demos).
        allow_socks5: accept ``socks5://`` (local name resolution: a DNS
            leak) as well as ``socks5h://``.
        allow_insecure_http: accept a plain ``http://`` server that is not
            an onion service.
    """

    def __init__(
        self,
        debug: Callable[[str], None] | None = None,
        *,
        name: str | None = None,
        path: str | os.PathLike[str] | None = None,
        proxy_url: str = DEFAULT_PROXY_URL,
        gateway_key_config: str | os.PathLike[str] | None = None,
        keyring_backend: keyring.backend.KeyringBackend | None = None,
        allow_insecure_keyring: bool = False,
        allow_socks5: bool = False,
        allow_insecure_http: bool = False,
        **kwargs: Any,
    ) -> None:
        if name is None:
            # A store file's name is what it is sealed under, unless told.
            name = (
                store_name_for(Path(path))
                if path is not None
                else DEFAULT_STORE_NAME
            )
        if not STORE_NAME_PATTERN.fullmatch(name):
            raise ConfigurationError(
                f"name must be 1-64 letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit; got {name!r}"
            )
        self.name = name
        self.path = (
            Path(path).expanduser()
            if path is not None
            else default_store_path(name)
        )
        if self.path.is_dir():
            raise ConfigurationError(
                f"path must name the store file, not a folder: {self.path} "
                f"(for example {self.path / (name + STORE_SUFFIX)})"
            )
        self.proxy = parse_proxy_url(proxy_url, allow_socks5=allow_socks5)
        self.key_config = (
            envelope.KeyConfig.load(gateway_key_config)
            if gateway_key_config is not None
            else None
        )
        self._allow_insecure_http = allow_insecure_http
        self._keysets = KeyringKeysets(
            backend=keyring_backend,
            allow_insecure_keyring=allow_insecure_keyring,
        )
        self._file = SealedFile(self.path, name)
        self._keyset: Keyset | None = None
        self._pending: _PendingReport | None = None
        self._state_lock = threading.RLock()
        self._snapshot_seq = 0
        # Made on the first send: a store opens and persists far more
        # often than it sends.
        self._sender: Sender | None = None
        self._send_pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="secure-store-send"
        )
        self._persister = _PersistWorker(
            self._write_sealed, self._note_persist_result
        )
        # What this process last saw on disk: the file's identity and the
        # plaintext it holds, to notice another process writing the store.
        self._on_disk: tuple[tuple[int, int, int] | None, bytes | None] = (
            None,
            None,
        )
        self._keyring_retry_at = 0.0
        #: The error of the last failed write, None after a good one.
        self.last_persist_error: Exception | None = None
        self._closed = False
        #: Why the last load found no usable store, if it did not.
        self.load_error: SecureStoreError | None = None
        #: Where an unreadable store file was moved, if one was.
        self.quarantined: list[Path] = []
        super().__init__(debug, **kwargs)
        _open_stores.add(self)

    # -- the Store contract --------------------------------------------------

    def load(self, **kwargs: Any) -> dict[str, Any] | None:
        """Open the sealed store with its keyset from the keyring.

        A missing file starts an empty store with a keyset (created if the
        keyring has none). A file that cannot be opened is quarantined and
        an empty store starts; a keyring that is locked or missing leaves
        the file untouched, and nothing is persisted until it is back.
        """
        try:
            return self._load()
        except SecureStoreError as exc:
            self.load_error = exc
            log.warning("store %r not loaded: %s", self.name, exc)
            self.debug(f"store not loaded: {exc}")
            return None

    def persist(self, asynchronous: bool, done: Done) -> None:
        """Seal the store and write it atomically, now or on a worker."""
        if self._keyset is None and self._keyring_may_be_back():
            self._retry_keyring()
        if self._keyset is None:
            error = self.load_error or StorageError("store is closed")
            self.last_persist_error = error
            call_done(
                done,
                StorageError(f"store {self.name!r} not persisted: {error}"),
            )
            return
        seq, snapshot = self._snapshot()
        if asynchronous and not self._closed:
            self._persister.submit(seq, snapshot, done)
        else:
            self._persister.write_now(seq, snapshot, done)

    def send(self, data: str, server: str, timeout: float, done: Done) -> None:
        """Seal ``data`` to the gateway and POST it through the proxy.

        Returns at once; ``done`` is called exactly once from the sending
        thread: ``None`` on a 2xx answer, a ``SendError`` (or a
        ``KeyConfigError``/``ProxyConfigError``) otherwise. It never raises.
        """
        try:
            job = self._prepare_send(data, server, timeout)
        except Exception as exc:
            call_done(done, exc)
            return
        try:
            self._send_pool.submit(self._deliver, *job, done)
        except RuntimeError as exc:  # the pool was shut down by close()
            call_done(done, StorageError(f"store is closed: {exc}"))

    # -- persistence of our own state --------------------------------------

    def extra_fields(self) -> dict[str, Any]:
        """Our own state in the store JSON: the pending report, if any."""
        with self._state_lock:
            if self._pending is None:
                return {}
            return {
                SECURE_STORE_KEY: {PENDING_REPORT_KEY: self._pending.to_dict()}
            }

    def close(self) -> None:
        """Write what is queued and stop the workers; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._persister.stop()
        self._send_pool.shutdown(wait=True)
        if self._sender is not None:
            self._sender.close()
        _open_stores.discard(self)

    def __enter__(self) -> SecureStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _load(self) -> dict[str, Any] | None:
        opened = open_store(self._file, self._keysets)
        self._keyset = opened.keyset
        self._on_disk = (self._file_identity(), opened.plaintext)
        if opened.quarantined is not None:
            self._note_quarantine(opened.quarantined, opened.reason or "")
        if opened.plaintext is None:
            self.debug("no readable store file; starting empty")
            return None
        return self._parse(opened.plaintext)

    def _parse(self, plaintext: bytes) -> dict[str, Any] | None:
        try:
            data = json.loads(plaintext.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self._quarantine(StoreFileError(f"store JSON is invalid: {exc}"))
            return None
        if not isinstance(data, dict):
            self._quarantine(StoreFileError("store JSON is not an object"))
            return None
        ours = data.get(SECURE_STORE_KEY)
        if isinstance(ours, dict):
            self._pending = _PendingReport.from_dict(
                ours.get(PENDING_REPORT_KEY)
            )
        return data

    def _quarantine(self, reason: SecureStoreError) -> None:
        """Move a file that opened but holds no store JSON aside."""
        self._note_quarantine(self._file.quarantine(str(reason)), str(reason))

    def _note_quarantine(self, moved: Path, reason: str) -> None:
        self.quarantined.append(moved)
        self.load_error = StoreFileError(
            f"store {self.name!r} could not be opened ({reason}); "
            f"kept as {moved}, starting empty"
        )
        self.debug(str(self.load_error))

    def _snapshot(self) -> tuple[int, Snapshot]:
        # Only the copy is taken here, under the caller's lock; the JSON is
        # written by whichever thread writes the file.
        with self._state_lock:
            self._snapshot_seq += 1
            seq = self._snapshot_seq
            write_json = self.capture()
        return seq, lambda: write_json().encode("utf-8")

    def _write_sealed(self, snapshot: bytes) -> None:
        keyset = self._keyset
        if keyset is None:
            raise StorageError(f"store {self.name!r} has no key to seal with")
        with self._file.locked():
            self._check_unchanged_on_disk()
            try:
                self._file.write(snapshot, keyset)
            except KeyMissingError:
                # Another process rotated the key (`secure-store
                # rotate-key`): follow it rather than undo it.
                self._keyset = write_store(self._file, self._keysets, snapshot)
            self._on_disk = (self._file_identity(), snapshot)

    def _file_identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _check_unchanged_on_disk(self) -> None:
        """Refuse to overwrite what another process wrote meanwhile."""
        identity, plaintext = self._on_disk
        now = self._file_identity()
        if now is None or now == identity:
            return
        # A new file with the same content is a rotation's re-seal.
        keyset = self._keysets.load(self.name) or self._keyset
        try:
            on_disk = self._file.read(keyset) if keyset else None
        except SecureStoreError:
            on_disk = None
        if on_disk is not None and on_disk == plaintext:
            self._on_disk = (now, plaintext)
            return
        raise StoreConflictError(
            f"store file {self.path} was changed by another process since "
            "this one loaded it; not overwriting it. Use one process per "
            "store; restart this app to load what is on disk"
        )

    def _note_persist_result(self, error: Exception | None) -> None:
        self.last_persist_error = error
        if error is not None:
            log.warning("store %r not persisted: %s", self.name, error)

    def _keyring_may_be_back(self) -> bool:
        """Whether to ask a keyring that was locked or missing again."""
        if not isinstance(
            self.load_error, KeyringLockedError | KeyringUnavailableError
        ) or isinstance(self.load_error, InsecureKeyringError):
            return False
        now = time.monotonic()
        if now < self._keyring_retry_at:
            return False
        self._keyring_retry_at = now + KEYRING_RETRY_INTERVAL_S
        return True

    def _retry_keyring(self) -> None:
        """Adopt the keyring once it answers, unless the file has data.

        A store file that this process never loaded is not overwritten:
        merging it with what was measured meanwhile is not attempted.
        """
        try:
            opened = open_store(self._file, self._keysets)
        except SecureStoreError as exc:
            self.load_error = exc
            return
        if opened.plaintext is not None:
            self.load_error = StoreConflictError(
                f"the keyring is back, but store file {self.path} holds "
                "data this process never loaded; not overwriting it. "
                "Restart the app to load it"
            )
            return
        if opened.quarantined is not None:
            self._note_quarantine(opened.quarantined, opened.reason or "")
        self._keyset = opened.keyset
        self.load_error = None
        log.info("keyring for store %r is back; persisting again", self.name)

    def _prepare_send(
        self, data: str, server: str, timeout: float
    ) -> tuple[
        envelope.KeyConfig,
        str,
        _PendingReport,
        tuple[int, Snapshot] | None,
        float,
    ]:
        if self._closed:
            raise StorageError("store is closed")
        key_config = self._require_key_config()
        url = check_server_url(
            server, allow_insecure_http=self._allow_insecure_http
        )
        timeout_s = _finite_seconds(timeout)
        report = self._pending_report_for(data)
        # Snapshot now, while the caller holds its lock, so the pending
        # report is written with a consistent store before it is sent.
        snapshot = self._snapshot() if self._keyset is not None else None
        return key_config, url, report, snapshot, timeout_s

    def _require_key_config(self) -> envelope.KeyConfig:
        if self.key_config is None:
            raise KeyConfigError(
                "no gateway key config: pass gateway_key_config= (the "
                "base64 text or file that `secure-store gateway keygen` "
                "printed)"
            )
        return self.key_config

    def _pending_report_for(self, data: str) -> _PendingReport:
        """Return the report to send ``data`` as, reusing a pending id."""
        with self._state_lock:
            pending = self._pending
            if pending is None or pending.payload != data:
                report_id = secrets.token_bytes(envelope.REPORT_ID_BYTES)
                pending = _PendingReport(report_id, data)
                self._pending = pending
            return pending

    def _deliver(
        self,
        key_config: envelope.KeyConfig,
        url: str,
        report: _PendingReport,
        snapshot: tuple[int, Snapshot] | None,
        timeout_s: float,
        done: Done,
    ) -> None:
        error: Exception | None = None
        try:
            if snapshot is not None:
                # The pending id must be on disk before the gateway may see
                # it, so that a retry after a crash reuses it.
                self._persister.write_now(*snapshot, self._log_failure)
            body = envelope.seal(
                key_config, report.report_id, report.payload.encode("utf-8")
            )
            if self._sender is None:
                self._sender = Sender(
                    self.proxy, allow_insecure_http=self._allow_insecure_http
                )
            self._sender.post(url, body, timeout_s)
            log.debug("report of %d bytes delivered", len(body))
        except Exception as exc:
            error = exc
        else:
            with self._state_lock:
                if self._pending is report:
                    self._pending = None
        call_done(done, error)

    @staticmethod
    def _log_failure(error: Exception | None) -> None:
        if error is not None:
            log.warning("pending report not persisted: %s", error)


# Stores still open at interpreter exit get their queued writes flushed.
_open_stores: weakref.WeakSet[SecureStore] = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:
    for store in list(_open_stores):
        try:
            store.close()
        except Exception:
            log.exception("closing store %r at exit failed", store.name)
