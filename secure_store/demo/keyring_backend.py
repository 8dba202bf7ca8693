"""Keyring backends for the demo, the tests and the benchmarks; never
chosen automatically, and not for production."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from jaraco.classes import properties
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

FILE_MODE = 0o600


class DemoPlaintextKeyring(KeyringBackend):
    """Keeps passwords in a JSON file, in plaintext: for the demo only.

    ``secure-store demo`` uses it on machines with no working OS keyring and
    says so; the folder is deleted when the demo ends. SecureStore refuses
    it unless ``allow_insecure_keyring=True`` is passed.
    """

    # keyring collects every subclass as a candidate backend: a priority
    # that raises makes this one non-viable, so it is never picked on its
    # own, only when passed in explicitly.
    @properties.classproperty
    def priority(cls) -> float:
        raise RuntimeError("demo backend; only used when passed explicitly")

    def __init__(self, folder: Path) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._path = folder / "demo-keyring.json"
        self._lock = threading.Lock()

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def _write(self, data: dict[str, str]) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)

    @staticmethod
    def _key(service: str, username: str) -> str:
        return f"{service}\x00{username}"

    def get_password(self, service: str, username: str) -> str | None:
        with self._lock:
            return self._read().get(self._key(service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        with self._lock:
            data = self._read()
            data[self._key(service, username)] = password
            self._write(data)

    def delete_password(self, service: str, username: str) -> None:
        with self._lock:
            data = self._read()
            if data.pop(self._key(service, username), None) is None:
                raise PasswordDeleteError("no such password")
            self._write(data)


class MemoryKeyring(KeyringBackend):
    """Keeps passwords in a dict, for tests and benchmarks.

    Like :class:`DemoPlaintextKeyring` it is never picked by keyring on its
    own, only when passed in (or installed with ``keyring.set_keyring``).
    """

    @properties.classproperty
    def priority(cls) -> float:
        raise RuntimeError("in-memory backend; only used when passed in")

    def __init__(
        self, entries: dict[tuple[str, str], str] | None = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.entries: dict[tuple[str, str], str] = dict(entries or {})
        self.lock = threading.Lock()

    def get_password(self, service: str, username: str) -> str | None:
        with self.lock:
            return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        with self.lock:
            self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        with self.lock:
            if self.entries.pop((service, username), None) is None:
                raise PasswordDeleteError("no such password")
