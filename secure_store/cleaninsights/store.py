"""The Store contract (consents and data points, persisted and sent).

:class:`Store` mirrors ``cleaninsights.store.Store``: its constructor calls
:meth:`Store.load` with the keyword arguments it was given and builds
``consents``, ``visits`` and ``events`` from the result; subclasses
implement :meth:`~Store.load`, :meth:`~Store.persist` and
:meth:`~Store.send`. (The reference docs ask implementers to override
``__init__``; it is ``load`` that must be implemented, and the flag is
called ``asynchronous``, not ``async``.)

``load`` may return already built objects or the raw JSON-shaped dicts of
:meth:`Store.to_dict`; a missing key counts as empty, unknown keys are
ignored, and a malformed data point is skipped with a warning (the
reference crashes on partial data). ``debug`` is not passed to ``load``.

Two stores ship with the core. :class:`MemoryStore` keeps everything in
memory and, unless given a transport, only records what it would send.
:class:`FileStore` keeps the store JSON in one file, written atomically
and durably, and POSTs directly over HTTP(S); it is **not encrypted** and
uses no proxy: it is the compatibility and benchmark baseline, and
``secure_store.SecureStore`` is the store to use for real data.
"""

from __future__ import annotations

import abc
import contextlib
import gc
import json
import logging
import os
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import (
    SendError,
    SendTimeoutError,
    ServerUnreachableError,
    StorageError,
)
from . import clock
from ._instants import format_instant
from .consents import Consents
from .datapoints import (
    Event,
    PointReader,
    Visit,
    capture_events,
    capture_visits,
    event_rows_json_text,
    events_to_json,
    visit_rows_json_text,
    visits_to_json,
)

logger = logging.getLogger(__name__)

Done = Callable[[Exception | None], None]
#: Delivers one CIMP body: ``transport(data, server, timeout_s)`` returns
#: on success and raises on failure.
Transport = Callable[[str, str, float], None]

CIMP_CONTENT_TYPE = "application/json; charset=UTF-8"
#: How much of an error response's body goes into the error message.
MAX_ERROR_BODY_BYTES = 2048
FILE_MODE = 0o600
FOLDER_MODE = 0o700
_OK_STATUSES = (200, 204)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Hold the cyclic garbage collector while building many objects.

    Reading or copying 100,000 points creates hundreds of thousands of
    containers, and each collection on the way walks all of them: a load
    of 100,000 points took 3.6 times as long with the collector running.
    Nothing built here holds a cycle, so nothing is left for it to find.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def dumps_compact(data: Any) -> str:
    """Serialise ``data`` as compact JSON that keeps non-ASCII text."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class Store(abc.ABC):
    """Holds the user's consents and measurements; persists and sends them.

    Subclass it to change where the store is kept and how summaries
    travel. ``persist`` and ``send`` must call ``done`` exactly once,
    possibly from another thread. :class:`CleanInsights` calls
    ``persist`` while holding its lock, so an implementation may take a
    consistent snapshot with :meth:`to_json` synchronously inside it.
    """

    def __init__(
        self, debug: Callable[[str], None] | None = None, **kwargs: Any
    ) -> None:
        self._debug_callback = debug
        self.consents = Consents()
        self.visits: list[Visit] = []
        self.events: list[Event] = []

        with paused_gc():
            data = self.load(**kwargs)
            if data is not None:
                self._adopt(data)
        if data is None:
            self.debug("Store: no stored data, starting empty.")

    # -- the contract ----------------------------------------------------

    @abc.abstractmethod
    def load(self, **kwargs: Any) -> Mapping[str, Any] | None:
        """Return the stored data, or None when there is none.

        Receives the constructor's keyword arguments (except ``debug``).
        The result has the keys ``consents``, ``visits`` and ``events``,
        holding built objects or their JSON-shaped dicts.
        """

    @abc.abstractmethod
    def persist(self, asynchronous: bool, done: Done) -> None:
        """Save the store, then call ``done(None)`` or ``done(error)``.

        With ``asynchronous`` true the SDK wants to return quickly; with it
        false the save must be finished when this returns (app exit).
        """

    @abc.abstractmethod
    def send(self, data: str, server: str, timeout: float, done: Done) -> None:
        """POST ``data`` to ``server`` and call ``done`` exactly once.

        ``done(None)`` only when the server answered 200 or 204; otherwise
        ``done(error)`` where an HTTP failure's message starts with
        ``HTTP Error <status>: `` (see
        :class:`~secure_store.errors.SendError`).
        """

    # -- helpers ---------------------------------------------------------

    def debug(self, message: str) -> None:
        """Pass ``message`` to the debug callback given at construction."""
        callback = self._debug_callback
        if callback is not None:
            try:
                callback(message)
            except Exception:  # a debug hook must not break measuring
                logger.exception("debug callback raised")

    def to_dict(self) -> dict[str, Any]:
        """Return the store as its persisted JSON-shaped dict.

        The keys are ``consents``, ``visits``, ``events`` and then those of
        :meth:`extra_fields`.
        """
        data = {
            "consents": self.consents.to_dict(),
            "visits": visits_to_json(self.visits),
            "events": events_to_json(self.events),
        }
        data.update(self.extra_fields())
        return data

    def extra_fields(self) -> dict[str, Any]:
        """Return more top-level keys a subclass keeps in the store JSON.

        None by default. Other SDKs ignore unknown keys, and so does
        this base class when loading; a subclass reads its own in
        :meth:`load`.
        """
        return {}

    def to_json(self) -> str:
        """Return :meth:`to_dict` as compact JSON text (encode as UTF-8).

        Equal to ``json.dumps(self.to_dict(), separators=(",", ":"),
        ensure_ascii=False)``. Unless a subclass overrides :meth:`to_dict`
        (add keys through :meth:`extra_fields` instead), the text is
        written without building the per-point dicts, which is about
        twice as fast for large stores.
        """
        return self.capture()()

    def capture(self) -> Callable[[], str]:
        """Copy the store's state now; the returned call writes its JSON.

        The copy takes about a tenth of the time of :meth:`to_json`, so a
        store can take it under its caller's lock and write the JSON on
        a worker thread; the returned function reads nothing but the copy
        and may run on any thread, any number of times.
        """
        if type(self).to_dict is not Store.to_dict:
            text = dumps_compact(self.to_dict())
            return lambda: text
        consents = dumps_compact(self.consents.to_dict())
        extra = self.extra_fields()
        extra_text = "," + dumps_compact(extra)[1:-1] if extra else ""
        with paused_gc():
            visits = capture_visits(self.visits)
            events = capture_events(self.events)

        def write() -> str:
            with paused_gc():
                return (
                    '{"consents":'
                    + consents
                    + ',"visits":'
                    + visit_rows_json_text(visits)
                    + ',"events":'
                    + event_rows_json_text(events)
                    + extra_text
                    + "}"
                )

        return write

    def _adopt(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping):
            self.debug("Store: loaded data is not a mapping; ignored.")
            logger.warning("loaded store data is not a mapping; ignored")
            return
        skipped: list[str] = []
        try:
            self.consents = Consents.from_dict(data.get("consents"), skipped)
        except ValueError as exc:
            skipped.append("consents")
            logger.debug("stored consents unreadable: %s", exc)
        if skipped:
            self.debug(f"Store: skipped malformed {', '.join(skipped)}.")
            logger.warning(
                "skipped %d malformed stored consents", len(skipped)
            )

        reader = PointReader()
        self.visits = self._read_points(
            data.get("visits"), reader.visit, "visits"
        )
        self.events = self._read_points(
            data.get("events"), reader.event, "events"
        )

    def _read_points(
        self, items: object, build: Callable[[object], Any], key: str
    ) -> list[Any]:
        if items is None:
            return []
        if not isinstance(items, list | tuple):
            self.debug(f"Store: {key} is not a list; ignored.")
            logger.warning("stored %s is not a list; ignored", key)
            return []
        result = []
        skipped = 0
        for item in items:
            try:
                result.append(build(item))
            except ValueError:
                skipped += 1
        if skipped:
            self.debug(f"Store: skipped {skipped} malformed {key}.")
            logger.warning("skipped %d malformed stored %s", skipped, key)
        return result


class MemoryStore(Store):
    """A store that lives in memory only.

    ``data`` (optional) is the initial content, shaped like the result of
    :meth:`Store.load`. Without a ``transport`` nothing leaves the process:
    :meth:`send` appends the body to :attr:`sent` and reports success.
    With one, ``transport(data, server, timeout)`` delivers the body and
    an exception it raises is the failure passed to ``done``.
    """

    def __init__(
        self,
        debug: Callable[[str], None] | None = None,
        *,
        data: Mapping[str, Any] | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.transport = transport
        #: Bodies "sent" without a transport, oldest first.
        self.sent: list[str] = []
        #: How many times :meth:`persist` was called.
        self.persist_count = 0
        super().__init__(debug, data=data)

    def load(self, **kwargs: Any) -> Mapping[str, Any] | None:
        """Return the ``data`` given to the constructor."""
        data: Mapping[str, Any] | None = kwargs.get("data")
        return data

    def persist(self, asynchronous: bool, done: Done) -> None:
        """Nothing to save; report success."""
        self.persist_count += 1
        done(None)

    def send(self, data: str, server: str, timeout: float, done: Done) -> None:
        """Deliver through the transport, or record the body."""
        if self.transport is None:
            self.sent.append(data)
            self.debug("MemoryStore: recorded a body instead of sending it.")
            done(None)
            return
        try:
            self.transport(data, server, timeout)
        except Exception as exc:
            done(exc)
        else:
            done(None)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post_cimp(data: str, server: str, timeout: float) -> None:
    """POST ``data`` to ``server`` directly, as the reference SDKs do.

    Returns on 200 or 204. Raises :class:`SendError` (``status`` set, the
    message ``HTTP Error <status>: <body>``) for any other answer,
    :class:`SendTimeoutError` or :class:`ServerUnreachableError` when no
    answer came. Environment proxies are ignored and redirects are not
    followed; there is no other policy here.
    """
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), _NoRedirects()
    )
    request = urllib.request.Request(
        server,
        data=data.encode("utf-8"),
        method="POST",
        headers={"Content-Type": CIMP_CONTENT_TYPE},
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            status = response.status
            body = response.read(MAX_ERROR_BODY_BYTES)
    except urllib.error.HTTPError as exc:
        status = exc.code
        body = exc.read(MAX_ERROR_BODY_BYTES) if exc.fp is not None else b""
    except TimeoutError as exc:
        raise SendTimeoutError(f"no answer within {timeout} s") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):  # timed out while connecting
            raise SendTimeoutError(f"no answer within {timeout} s") from exc
        raise ServerUnreachableError(f"server unreachable: {reason}") from exc
    if status not in _OK_STATUSES:
        text = body.decode("utf-8", "replace")
        raise SendError(f"HTTP Error {status}: {text}", status)


class FileStore(Store):
    """The store JSON in one plain file; sends directly. NOT ENCRYPTED.

    Each persist snapshots the store synchronously, then writes it to a
    temporary file (mode 0600) in the same folder, fsyncs it, renames it
    over the store file and fsyncs the folder, so the file is always
    either the old or the new store. With ``asynchronous`` the write runs
    on one background worker; a snapshot overtaken by a newer one before
    its turn is not written (the newer one holds its changes).

    A file that is not valid store JSON is moved aside to
    ``<name>.damaged-<UTC time>`` and the store starts empty. ``transport``
    replaces the direct HTTP POST of :func:`post_cimp`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        debug: Callable[[str], None] | None = None,
        *,
        transport: Transport | None = None,
    ) -> None:
        self.path = Path(path)
        self.transport: Transport = transport or post_cimp
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._latest_snapshot = 0
        self._executor: ThreadPoolExecutor | None = None
        super().__init__(debug, path=self.path)

    def load(self, **kwargs: Any) -> Mapping[str, Any] | None:
        """Read the store file; None when there is none yet."""
        path = Path(kwargs["path"])
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(
                f"store file {path} cannot be read: {exc.strerror}"
            ) from exc
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            try:
                aside = self._move_aside(path)
            except OSError as move_error:
                raise StorageError(
                    f"store file {path} is damaged and cannot be moved "
                    f"aside: {move_error.strerror}"
                ) from move_error
            self.debug(f"FileStore: damaged store file moved to {aside}.")
            logger.warning(
                "damaged store file moved to %s (%s)", aside, type(exc)
            )
            return None
        return data

    def persist(self, asynchronous: bool, done: Done) -> None:
        """Snapshot now; write now or on the worker; then call ``done``."""
        try:
            snapshot = self.to_json().encode("utf-8")
        except Exception as exc:
            done(exc)
            return
        with self._state_lock:
            self._latest_snapshot += 1
            number = self._latest_snapshot
        if not asynchronous:
            self._write(snapshot, number, done, skip_stale=False)
            return
        with self._state_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="filestore"
                )
            executor = self._executor
        executor.submit(self._write, snapshot, number, done, True)

    def send(self, data: str, server: str, timeout: float, done: Done) -> None:
        """POST ``data`` through the transport (direct HTTP by default)."""
        try:
            self.transport(data, server, timeout)
        except Exception as exc:
            done(exc)
        else:
            done(None)

    def close(self) -> None:
        """Finish pending writes and stop the worker."""
        with self._state_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # -- writing ---------------------------------------------------------

    def _write(
        self, snapshot: bytes, number: int, done: Done, skip_stale: bool
    ) -> None:
        error: Exception | None = None
        try:
            with self._write_lock:
                with self._state_lock:
                    stale = number < self._latest_snapshot
                if not (skip_stale and stale):
                    write_atomically(self.path, snapshot)
        except Exception as exc:
            error = exc
        try:
            done(error)
        except Exception:
            logger.exception("persist callback raised")

    @staticmethod
    def _move_aside(path: Path) -> Path:
        stamp = format_instant(clock.now()).replace(":", "-")
        aside = path.with_name(f"{path.name}.damaged-{stamp}")
        os.replace(path, aside)
        return aside


def write_atomically(path: Path, content: bytes) -> None:
    """Replace ``path`` with ``content`` atomically and durably (0600)."""
    folder = path.parent
    folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=folder
    )
    try:
        # mkstemp already creates the file 0600; say so explicitly anyway
        # in case the platform's default differs.
        if hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder for fsync
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
