"""Keysets (the keys that seal one store) and their home in the OS keyring."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import keyring
import keyring.backend
import keyring.errors
from keyring.backends import chainer, fail, null

from secure_store.cleaninsights import clock
from secure_store.errors import (
    InsecureKeyringError,
    KeyMissingError,
    KeyringError,
    KeyringLockedError,
    KeyringUnavailableError,
)

logger = logging.getLogger(__name__)

KEYRING_SERVICE = "secure-store"
# A Secret Service that waits for an unlock prompt nobody can answer blocks
# forever on a headless machine; a healthy one answers in about 15 ms.
KEYRING_TIMEOUT_S = 10.0
KEY_BYTES = 32
KEYSET_FORMAT_VERSION = 1
# Key ids are written into every sealed file header as 4 bytes.
KEY_ID_MAX = 2**32 - 1
DAMAGED_MARK = "#damaged-"

FIX_HINT = (
    "install and unlock a Secret Service (for example gnome-keyring) or "
    "the platform keychain, or choose a backend with PYTHON_KEYRING_BACKEND"
)

# Backends that keep secrets readable to anyone who can read the user's
# files (keyrings.alt's file backends are matched by name: that package is
# optional), besides keyring's null backend, which keeps nothing.
_PLAINTEXT_BACKENDS = frozenset(
    {
        "keyrings.alt.file.PlaintextKeyring",
        "keyrings.alt.pyfs.PlaintextKeyring",
    }
)

T = TypeVar("T")


@dataclass(frozen=True)
class Keyset:
    """The keys of one store: a primary that seals, and older ones that open.

    ``keys`` maps a key id (1 to 2**32-1, written into each sealed file's
    header) to a 32-byte key. ``repr`` shows key ids only, never keys.

    >>> keyset = Keyset.generate()
    >>> len(keyset.primary_key)
    32
    """

    primary_id: int
    keys: Mapping[int, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        keys = dict(self.keys)
        for key_id, key in keys.items():
            if not isinstance(key_id, int) or not 0 < key_id <= KEY_ID_MAX:
                raise ValueError(f"key id {key_id!r} is out of range")
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id:08x} is not {KEY_BYTES} bytes")
        if self.primary_id not in keys:
            raise ValueError(
                f"primary key id {self.primary_id:08x} is not in the keyset"
            )
        # Frozen means frozen: nobody edits a keyset behind our back.
        object.__setattr__(self, "keys", MappingProxyType(keys))

    def __repr__(self) -> str:
        ids = ", ".join(f"{key_id:08x}" for key_id in sorted(self.keys))
        return f"Keyset(primary_id={self.primary_id:08x}, key_ids=[{ids}])"

    @property
    def primary_key(self) -> bytes:
        """The key that seals new writes."""
        return self.keys[self.primary_id]

    @property
    def key_ids(self) -> tuple[int, ...]:
        """Every key id in the keyset, sorted."""
        return tuple(sorted(self.keys))

    @classmethod
    def generate(cls) -> Keyset:
        """Return a keyset holding one fresh random key as its primary."""
        key_id = _fresh_key_id(())
        return cls(key_id, {key_id: secrets.token_bytes(KEY_BYTES)})

    def with_new_primary(self) -> Keyset:
        """Return this keyset plus a fresh key that becomes the primary."""
        key_id = _fresh_key_id(self.keys)
        keys = dict(self.keys)
        keys[key_id] = secrets.token_bytes(KEY_BYTES)
        return Keyset(key_id, keys)

    def retain_only(self, key_ids: Iterable[int]) -> Keyset:
        """Return the keyset reduced to ``key_ids`` (must keep the primary)."""
        wanted = set(key_ids)
        if self.primary_id not in wanted:
            raise ValueError("retain_only() must keep the primary key")
        return Keyset(
            self.primary_id,
            {k: v for k, v in self.keys.items() if k in wanted},
        )

    def to_json(self) -> str:
        """Serialize for the keyring: version, primary id, base64 keys."""
        return json.dumps(
            {
                "version": KEYSET_FORMAT_VERSION,
                "primary": self.primary_id,
                "keys": {
                    str(key_id): base64.b64encode(key).decode("ascii")
                    for key_id, key in sorted(self.keys.items())
                },
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Keyset:
        """Parse a keyring entry written by :meth:`to_json`.

        A damaged or foreign entry raises :class:`KeyMissingError`: the
        keyring answered, but holds no usable key. The message says what
        is wrong and never contains key material.
        """
        try:
            document = json.loads(text)
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            version = document.get("version")
            if version != KEYSET_FORMAT_VERSION:
                raise ValueError(f"unknown keyset version {version!r}")
            primary = document["primary"]
            if not isinstance(primary, int) or isinstance(primary, bool):
                raise ValueError("primary is not an integer")
            raw_keys = document["keys"]
            if not isinstance(raw_keys, dict):
                raise ValueError("keys is not an object")
            keys = {
                int(key_id): base64.b64decode(value, validate=True)
                for key_id, value in raw_keys.items()
            }
            return cls(primary, keys)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            # json.JSONDecodeError is a ValueError; its message quotes no
            # text, and ours name fields only, so no key leaks here.
            raise KeyMissingError(
                f"the keyring entry is damaged ({type(exc).__name__}: "
                f"{_safe_reason(exc)})"
            ) from None


def _safe_reason(exc: BaseException) -> str:
    """Describe a parse failure without echoing the entry's content."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON at character {exc.pos}"
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    if isinstance(exc, binascii.Error):
        return "a key is not valid base64"
    return str(exc)


def _fresh_key_id(taken: Iterable[int]) -> int:
    """Pick a random key id that is not zero and not in ``taken``."""
    used = set(taken)
    while True:
        key_id = secrets.randbits(32)
        if key_id and key_id not in used:
            return key_id


def backend_label(backend: keyring.backend.KeyringBackend) -> str:
    """Name a backend as ``module.Class (priority N)`` for messages."""
    cls = type(backend)
    name = f"{cls.__module__}.{cls.__qualname__}"
    try:
        return f"{name} (priority {backend.priority:g})"
    except Exception:  # a backend may refuse to rate itself
        return name


def _qualified_name(backend: keyring.backend.KeyringBackend) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_insecure(backend: keyring.backend.KeyringBackend) -> bool:
    if isinstance(backend, null.Keyring):
        return True
    name = _qualified_name(backend)
    return name in _PLAINTEXT_BACKENDS or "plaintext" in name.lower()


def _is_fail(backend: keyring.backend.KeyringBackend) -> bool:
    return isinstance(backend, fail.Keyring)


class KeyringKeysets:
    """Load and save each store's keyset in the OS keyring, with a deadline.

    One keyring entry per store: service ``service``, user name = the
    store's name, secret = :meth:`Keyset.to_json`. ``backend`` defaults to
    what ``keyring.get_keyring()`` picks; any ``KeyringBackend`` instance
    may be passed instead. Backends that keep secrets in plaintext or keep
    nothing (null) raise :class:`InsecureKeyringError` unless
    ``allow_insecure_keyring`` is true; the fail backend, or none at all,
    raises :class:`KeyringUnavailableError`. Every keyring call runs on a
    daemon thread and raises :class:`KeyringLockedError` after
    ``timeout_s`` instead of hanging.
    """

    def __init__(
        self,
        service: str = KEYRING_SERVICE,
        *,
        backend: keyring.backend.KeyringBackend | None = None,
        allow_insecure_keyring: bool = False,
        timeout_s: float = KEYRING_TIMEOUT_S,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.service = service
        self.allow_insecure_keyring = allow_insecure_keyring
        self.timeout_s = timeout_s
        self._given_backend = backend
        self._backend: keyring.backend.KeyringBackend | None = None
        self._resolve_lock = threading.Lock()
        # A call that blew its deadline may still be blocked inside the
        # backend; new calls fail fast instead of piling up threads.
        self._stuck: threading.Thread | None = None

    # -- the backend

    @property
    def backend(self) -> keyring.backend.KeyringBackend:
        """The checked backend in use (resolved on first use)."""
        with self._resolve_lock:
            if self._backend is None:
                self._backend = self._resolve()
            return self._backend

    @property
    def backend_name(self) -> str:
        """The backend in use, as ``module.Class (priority N)``."""
        return backend_label(self.backend)

    def _resolve(self) -> keyring.backend.KeyringBackend:
        if self._given_backend is not None:
            found = self._given_backend
        else:
            found = self._deadline("find a backend", _default_backend)
        chosen = self._unchain(found)

        if _is_fail(chosen):
            raise KeyringUnavailableError(
                f"no usable keyring backend: found {backend_label(chosen)}; "
                f"{FIX_HINT}"
            )
        if _is_insecure(chosen):
            if not self.allow_insecure_keyring:
                raise InsecureKeyringError(
                    f"refusing keyring backend {backend_label(chosen)}: it "
                    "keeps secrets in plaintext or not at all. "
                    f"{FIX_HINT[0].upper()}{FIX_HINT[1:]}; or pass "
                    "allow_insecure_keyring=True to accept it knowingly"
                )
            logger.warning(
                "using insecure keyring backend %s because "
                "allow_insecure_keyring=True",
                backend_label(chosen),
            )
        logger.debug("keyring backend in use: %s", backend_label(chosen))
        return chosen

    def _unchain(
        self, found: keyring.backend.KeyringBackend
    ) -> keyring.backend.KeyringBackend:
        """Pick the best secure backend out of keyring's chainer.

        The chainer writes to the next backend when one fails, so a locked
        Secret Service would silently land our key in a plaintext file.
        """
        if not isinstance(found, chainer.ChainerBackend):
            return found
        chained: list[keyring.backend.KeyringBackend] = list(
            getattr(found, "backends", [])
        )
        secure = [b for b in chained if not _is_insecure(b)]
        secure = [b for b in secure if not _is_fail(b)]
        if secure:
            return secure[0]  # the chainer sorts by priority, best first
        if chained:
            return chained[0]  # insecure: refused or warned about later
        raise KeyringUnavailableError(
            f"no usable keyring backend: found {backend_label(found)} "
            f"with nothing to chain; {FIX_HINT}"
        )

    # -- calls with a deadline

    def _deadline(self, what: str, call: Callable[[], T]) -> T:
        stuck = self._stuck
        if stuck is not None and stuck.is_alive():
            raise KeyringLockedError(
                f"the keyring still has not answered an earlier call; it "
                f"may be locked and waiting for an unlock prompt (could "
                f"not {what})"
            )

        outcome: list[Any] = []
        finished = threading.Event()

        def run() -> None:
            try:
                outcome.append((True, call()))
            except BaseException as exc:  # handed to the waiting thread
                outcome.append((False, exc))
            finally:
                finished.set()

        worker = threading.Thread(
            target=run, name=f"keyring: {what}", daemon=True
        )
        worker.start()
        if not finished.wait(self.timeout_s):
            self._stuck = worker
            raise KeyringLockedError(
                f"the keyring did not answer within {self.timeout_s:g} s "
                f"(could not {what}); it may be locked and waiting for an "
                "unlock prompt. Unlock it and try again"
            )
        succeeded, value = outcome[0]
        if succeeded:
            return value  # type: ignore[no-any-return]
        if isinstance(value, KeyringError):
            raise value
        raise self._translate(what, value) from value

    def _translate(self, what: str, exc: BaseException) -> KeyringError:
        if isinstance(exc, keyring.errors.KeyringLocked):
            return KeyringLockedError(
                f"the keyring is locked (could not {what}); unlock it and "
                "try again"
            )
        if isinstance(exc, keyring.errors.InitError):
            # Secret Service could not create or open its collection
            # without a prompt: the user must unlock it, nothing is lost.
            return KeyringLockedError(
                f"the keyring needs to be unlocked or set up interactively "
                f"(could not {what}: {exc})"
            )
        if isinstance(exc, keyring.errors.NoKeyringError):
            return KeyringUnavailableError(
                f"no usable keyring backend (could not {what}: {exc}); "
                f"{FIX_HINT}"
            )
        return KeyringUnavailableError(
            f"keyring backend failed (could not {what}): "
            f"{type(exc).__name__}: {exc}"
        )

    # -- keysets

    def load(self, store_name: str) -> Keyset | None:
        """Return the store's keyset, or None when the keyring has none.

        Raises KeyMissingError for a damaged entry, KeyringLockedError and
        KeyringUnavailableError when the keyring cannot answer.
        """
        backend = self.backend
        text = self._deadline(
            "read a keyset",
            lambda: backend.get_password(self.service, store_name),
        )
        if text is None:
            logger.debug("keyring holds no keyset for this store")
            return None
        try:
            keyset = Keyset.from_json(text)
        except KeyMissingError as exc:
            raise KeyMissingError(
                f"keyring entry for store {store_name!r} (service "
                f"{self.service!r}): {exc}"
            ) from None
        logger.debug("loaded keyset %r", keyset)
        return keyset

    def save(self, store_name: str, keyset: Keyset) -> None:
        """Store ``keyset`` as the store's entry and check it was kept."""
        backend = self.backend
        text = keyset.to_json()
        self._deadline(
            "save a keyset",
            lambda: backend.set_password(self.service, store_name, text),
        )
        # Some backends accept a secret and keep nothing (null) or keep
        # something else; a store sealed under a key we lost is lost.
        kept = self._deadline(
            "read back a keyset",
            lambda: backend.get_password(self.service, store_name),
        )
        if kept != text:
            raise KeyringUnavailableError(
                f"keyring backend {self.backend_name} did not keep the "
                f"keyset for store {store_name!r}; {FIX_HINT}"
            )
        logger.debug("saved keyset %r", keyset)

    def delete(self, store_name: str) -> None:
        """Remove the store's entry; a missing entry is not an error."""
        backend = self.backend

        def delete() -> None:
            try:
                backend.delete_password(self.service, store_name)
            except keyring.errors.PasswordDeleteError:
                if backend.get_password(self.service, store_name) is not None:
                    raise

        self._deadline("delete a keyset", delete)
        logger.debug("deleted the keyset of a store")

    def create(self, store_name: str) -> Keyset:
        """Generate, save and return a fresh keyset for a new store.

        Refuses with :class:`KeyringError` when the keyring already holds
        a readable keyset for this store, so a new key never replaces one
        that may still open data. A damaged entry is first copied aside to
        user ``<store name>#damaged-<UTC timestamp>`` (for a human to
        rescue), then replaced.
        """
        backend = self.backend
        text = self._deadline(
            "read a keyset",
            lambda: backend.get_password(self.service, store_name),
        )
        if text is not None:
            try:
                Keyset.from_json(text)
            except KeyMissingError:
                self._keep_aside(store_name, text)
            else:
                raise KeyringError(
                    f"the keyring already holds a keyset for store "
                    f"{store_name!r}; refusing to replace it with a new one"
                )
        keyset = Keyset.generate()
        self.save(store_name, keyset)
        logger.info(
            "created keyset %08x for store %r", keyset.primary_id, store_name
        )
        return keyset

    def _keep_aside(self, store_name: str, text: str) -> None:
        backend = self.backend
        stamp = clock.now().strftime("%Y%m%dT%H%M%S.%fZ")
        aside = f"{store_name}{DAMAGED_MARK}{stamp}"
        self._deadline(
            "keep a damaged keyset aside",
            lambda: backend.set_password(self.service, aside, text),
        )
        logger.warning(
            "the keyring entry of store %r is damaged; kept it as user %r "
            "of service %r and made a new keyset",
            store_name,
            aside,
            self.service,
        )


def _default_backend() -> keyring.backend.KeyringBackend:
    """Ask keyring for its choice, naming PYTHON_KEYRING_BACKEND on errors."""
    try:
        return keyring.get_keyring()
    except Exception as exc:
        # get_keyring() raises when PYTHON_KEYRING_BACKEND names a module
        # that is missing or a backend that cannot start (no D-Bus).
        raise KeyringUnavailableError(
            f"could not start the configured keyring backend "
            f"({type(exc).__name__}: {exc}); check PYTHON_KEYRING_BACKEND "
            f"and the keyring config, or {FIX_HINT}"
        ) from exc
