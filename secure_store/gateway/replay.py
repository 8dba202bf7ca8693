"""Replay caches that let the gateway forward each report id only once."""

from __future__ import annotations

import enum
import logging
import os
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from secure_store.cleaninsights import clock
from secure_store.errors import ReplayCacheError

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

# A forwarded report id is refused again for this long. Clients keep an
# unacknowledged report (and its id) far shorter than this, so a repeat
# after the window is no longer a retry of the same delivery.
DEFAULT_RETENTION_S = 30 * 86_400

# SQLite waits this long for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_S = 10.0

# Expired rows are swept at most this often, not on every request.
PURGE_INTERVAL_S = 60.0

# Redis answers within this or the request fails as "cache unavailable".
REDIS_SOCKET_TIMEOUT_S = 5.0

REDIS_KEY_PREFIX = "secure-store:replay:"

_TOKEN_BYTES = 16


class ClaimStatus(enum.Enum):
    """What the cache said when the gateway asked to forward a report id."""

    CLAIMED = "claimed"
    """Nobody forwarded this id yet: the caller holds a lease to do it."""

    FORWARDED = "forwarded"
    """This id was forwarded within the retention window."""

    IN_FLIGHT = "in-flight"
    """Another request holds an unexpired lease on this id right now."""


@dataclass(frozen=True)
class Claim:
    """The answer of :meth:`ReplayCache.claim`.

    ``token`` identifies the lease when ``status`` is ``CLAIMED``, so a
    request whose lease ran out cannot release a lease taken over by
    another request.
    """

    report_id: bytes
    status: ClaimStatus
    token: bytes = b""


class ReplayCache(Protocol):
    """Where the gateway records which report ids it has forwarded.

    A report id goes through two states: *in flight* (one request holds a
    lease while it forwards the report) and *forwarded* (upstream said
    yes; kept for the retention window). A lease that is neither marked
    nor released runs out after ``lease_s`` so a crashed worker does not
    block an id forever. Every method raises :class:`ReplayCacheError`
    when the backing store fails.
    """

    def claim(self, report_id: bytes, lease_s: float) -> Claim:
        """Take a lease on ``report_id`` unless it is forwarded or leased."""
        ...

    def mark_forwarded(self, claim: Claim) -> None:
        """Record that the claimed report reached upstream."""
        ...

    def release(self, claim: Claim) -> None:
        """Give the lease back so a retry can forward the report."""
        ...

    def close(self) -> None:
        """Free connections; the cache must not be used afterwards."""
        ...


def _now_s() -> float:
    return clock.now().timestamp()


def _new_token() -> bytes:
    return secrets.token_bytes(_TOKEN_BYTES)


def _check_retention(retention_s: float) -> float:
    if retention_s <= 0:
        raise ReplayCacheError(
            f"retention must be positive, not {retention_s!r} seconds"
        )
    return float(retention_s)


class MemoryReplayCache:
    """A replay cache inside one process, forgotten on restart.

    For tests and single-process trials only: several worker processes or
    gateway instances do not share it.
    """

    def __init__(self, *, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.retention_s = _check_retention(retention_s)
        self._lock = threading.Lock()
        # report id -> (status, token, valid until in Unix seconds)
        self._entries: dict[bytes, tuple[ClaimStatus, bytes, float]] = {}

    def claim(self, report_id: bytes, lease_s: float) -> Claim:
        """Take a lease on ``report_id`` unless it is forwarded or leased."""
        now = _now_s()
        with self._lock:
            entry = self._entries.get(report_id)
            if entry is not None and entry[2] > now:
                return Claim(report_id, entry[0])
            token = _new_token()
            self._entries[report_id] = (
                ClaimStatus.IN_FLIGHT,
                token,
                now + lease_s,
            )
            return Claim(report_id, ClaimStatus.CLAIMED, token)

    def mark_forwarded(self, claim: Claim) -> None:
        """Record that the claimed report reached upstream."""
        until = _now_s() + self.retention_s
        with self._lock:
            self._entries[claim.report_id] = (
                ClaimStatus.FORWARDED,
                b"",
                until,
            )

    def release(self, claim: Claim) -> None:
        """Give the lease back so a retry can forward the report."""
        with self._lock:
            entry = self._entries.get(claim.report_id)
            if entry is not None and entry[:2] == (
                ClaimStatus.IN_FLIGHT,
                claim.token,
            ):
                del self._entries[claim.report_id]

    def close(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS report_ids (
    report_id BLOB PRIMARY KEY,
    forwarded INTEGER NOT NULL,
    token BLOB NOT NULL,
    valid_until REAL NOT NULL
) WITHOUT ROWID
"""


class SQLiteReplayCache:
    """A replay cache in one SQLite file, shared by every process using it.

    Each claim runs in a ``BEGIN IMMEDIATE`` transaction, which takes the
    database's write lock first, so two processes (or threads) claiming
    the same id at once are serialised and exactly one gets the lease.
    The file is created with mode 0600. It must live on a local file
    system: SQLite locking over NFS is not reliable.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        self.path = Path(path)
        self.retention_s = _check_retention(retention_s)
        self._lock = threading.Lock()
        self._next_purge_s = 0.0
        self._db, self._pid = self._connect(), os.getpid()

    def _connect(self) -> sqlite3.Connection:
        try:
            self._create_private_file()
            # One connection guarded by a lock: each statement takes
            # microseconds, and sqlite3 objects must not be used by two
            # threads at once.
            db = sqlite3.connect(
                self.path,
                timeout=SQLITE_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SQLITE_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ReplayCacheError(
                f"cannot open the replay cache {self.path}: {exc}"
            ) from exc
        return db

    def _connection(self) -> sqlite3.Connection:
        # Called with the lock held. A connection must not cross fork()
        # (gunicorn --preload builds the app before forking workers):
        # each process opens its own.
        if self._pid != os.getpid():
            self._db, self._pid = self._connect(), os.getpid()
        return self._db

    def _create_private_file(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)

    def claim(self, report_id: bytes, lease_s: float) -> Claim:
        """Take a lease on ``report_id`` unless it is forwarded or leased."""
        now = _now_s()
        token = _new_token()
        with self._lock:
            try:
                db = self._connection()
                self._maybe_purge(db, now)
                db.execute("BEGIN IMMEDIATE")
                try:
                    row = db.execute(
                        "SELECT forwarded, valid_until FROM report_ids"
                        " WHERE report_id = ?",
                        (report_id,),
                    ).fetchone()
                    if row is not None and row[1] > now:
                        db.execute("COMMIT")
                        status = (
                            ClaimStatus.FORWARDED
                            if row[0]
                            else ClaimStatus.IN_FLIGHT
                        )
                        return Claim(report_id, status)
                    db.execute(
                        "INSERT OR REPLACE INTO report_ids"
                        " VALUES (?, 0, ?, ?)",
                        (report_id, token, now + lease_s),
                    )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise ReplayCacheError(
                    f"replay cache {self.path}: {exc}"
                ) from exc
        return Claim(report_id, ClaimStatus.CLAIMED, token)

    def mark_forwarded(self, claim: Claim) -> None:
        """Record that the claimed report reached upstream."""
        until = _now_s() + self.retention_s
        self._write(
            "INSERT OR REPLACE INTO report_ids VALUES (?, 1, ?, ?)",
            (claim.report_id, b"", until),
        )

    def release(self, claim: Claim) -> None:
        """Give the lease back so a retry can forward the report."""
        self._write(
            "DELETE FROM report_ids"
            " WHERE report_id = ? AND forwarded = 0 AND token = ?",
            (claim.report_id, claim.token),
        )

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        with self._lock:
            try:
                self._connection().execute(sql, params)
            except sqlite3.Error as exc:
                raise ReplayCacheError(
                    f"replay cache {self.path}: {exc}"
                ) from exc

    def _maybe_purge(self, db: sqlite3.Connection, now: float) -> None:
        # Called with the lock held. Expired rows are harmless (claim
        # ignores them); sweeping only keeps the file small.
        if now < self._next_purge_s:
            return
        self._next_purge_s = now + PURGE_INTERVAL_S
        db.execute("DELETE FROM report_ids WHERE valid_until <= ?", (now,))


# Each script runs atomically inside Redis. Values are
#   "I|<lease end, Unix s>|<token hex>"  while a request holds the lease,
#   "F|<retention end, Unix s>"          once forwarded.
# The times come from the gateway's clock (ARGV), so the retention window
# follows the same clock as everywhere else; the Redis TTL only makes sure
# stale keys disappear.
_REDIS_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then
  local state, until_s = string.match(v, '^(%a)|([^|]+)')
  if state and tonumber(until_s) > tonumber(ARGV[1]) then
    return state
  end
end
redis.call('SET', KEYS[1], 'I|' .. ARGV[2] .. '|' .. ARGV[3],
           'PX', ARGV[4])
return 'C'
"""

_REDIS_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 1) == 'I'
   and string.sub(v, -string.len(ARGV[1])) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

_REDIS_STATUS = {
    b"C": ClaimStatus.CLAIMED,
    b"F": ClaimStatus.FORWARDED,
    b"I": ClaimStatus.IN_FLIGHT,
}


class RedisReplayCache:
    """A replay cache in Redis, for several gateway instances.

    Claims are atomic Lua scripts, so exactly one instance gets the lease
    on an id. Use a Redis with persistence if replays across a Redis
    restart matter. The constructor sends a PING, so a wrong URL or a
    Redis that is down fails at start-up with :class:`ReplayCacheError`,
    as does a missing ``redis`` package.
    """

    def __init__(
        self,
        url: str,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        client: redis.Redis | None = None,
    ) -> None:
        try:
            import redis as redis_module
        except ImportError as exc:
            raise ReplayCacheError(
                "a Redis replay cache needs the redis package: "
                "pip install 'secure-store[redis]'"
            ) from exc

        self.retention_s = _check_retention(retention_s)
        where = _redacted(url)
        self._errors: tuple[type[Exception], ...] = (
            redis_module.RedisError,
            OSError,
        )
        try:
            self._redis = client or redis_module.Redis.from_url(
                url,
                socket_timeout=REDIS_SOCKET_TIMEOUT_S,
                socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
            )
            self._claim = self._redis.register_script(_REDIS_CLAIM)
            self._release = self._redis.register_script(_REDIS_RELEASE)
            self._redis.ping()
        except (ValueError, *self._errors) as exc:
            raise ReplayCacheError(
                f"cannot use the Redis replay cache at {where}: {exc}"
            ) from exc

    def claim(self, report_id: bytes, lease_s: float) -> Claim:
        """Take a lease on ``report_id`` unless it is forwarded or leased."""
        token = _new_token()
        now = _now_s()
        answer = self._call(
            self._claim,
            [self._key(report_id)],
            [
                repr(now),
                repr(now + lease_s),
                token.hex(),
                max(1, int(lease_s * 1000)),
            ],
        )
        status = _REDIS_STATUS.get(bytes(answer))
        if status is None:
            raise ReplayCacheError(f"unexpected Redis answer {answer!r}")
        return Claim(
            report_id, status, token if status is ClaimStatus.CLAIMED else b""
        )

    def mark_forwarded(self, claim: Claim) -> None:
        """Record that the claimed report reached upstream."""
        until = _now_s() + self.retention_s
        try:
            self._redis.set(
                self._key(claim.report_id),
                f"F|{until!r}",
                px=max(1, int(self.retention_s * 1000)),
            )
        except self._errors as exc:
            raise ReplayCacheError(f"Redis replay cache: {exc}") from exc

    def release(self, claim: Claim) -> None:
        """Give the lease back so a retry can forward the report."""
        self._call(
            self._release, [self._key(claim.report_id)], [claim.token.hex()]
        )

    def close(self) -> None:
        """Close the connection pool."""
        try:
            self._redis.close()
        except self._errors as exc:
            logger.warning("closing the Redis replay cache failed: %s", exc)

    @staticmethod
    def _key(report_id: bytes) -> str:
        return REDIS_KEY_PREFIX + report_id.hex()

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except self._errors as exc:
            raise ReplayCacheError(f"Redis replay cache: {exc}") from exc


def _redacted(url: str) -> str:
    """Return ``url`` without the password it may carry, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "the given URL"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        netloc = "***@" + netloc
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def default_replay_cache_path() -> Path:
    """Return where the gateway keeps its SQLite replay cache by default."""
    import platformdirs

    return (
        platformdirs.user_state_path("secure-store", appauthor=False)
        / "gateway-replay.sqlite3"
    )


def open_replay_cache(
    spec: str | None, *, retention_s: float = DEFAULT_RETENTION_S
) -> ReplayCache:
    """Open the replay cache named by ``spec``.

    ``None`` or ``""`` means the SQLite file at
    :func:`default_replay_cache_path`; ``redis://``, ``rediss://`` and
    ``unix://`` URLs mean Redis; ``memory:`` means a cache inside this
    process only; anything else is a SQLite file path.

    >>> cache = open_replay_cache("memory:")
    """
    if not spec:
        return SQLiteReplayCache(
            default_replay_cache_path(), retention_s=retention_s
        )
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisReplayCache(spec, retention_s=retention_s)
    if spec == "memory:":
        return MemoryReplayCache(retention_s=retention_s)
    return SQLiteReplayCache(spec, retention_s=retention_s)
