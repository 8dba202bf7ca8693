"""Helpers shared by the tests: an in-memory keyring, polling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from jaraco.classes import properties
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError


class MemoryKeyring(KeyringBackend):
    """An in-memory keyring for unit tests (never chosen automatically)."""

    @properties.classproperty
    def priority(cls) -> float:
        raise RuntimeError("test backend; only used when passed explicitly")

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}
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


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll ``condition`` until it is truthy; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    return condition()
