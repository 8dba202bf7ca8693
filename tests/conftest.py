"""Fixtures shared by all tests: keyrings, clocks, real loopback servers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jaraco.classes import properties
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

from secure_store.cleaninsights.clock import FrozenClock, use_clock
from secure_store.demo.receiver import CimpReceiver
from secure_store.demo.socks import Pproxy


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


@pytest.fixture(autouse=True)
def _private_user_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep every test away from the real user's data and keyring."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


@pytest.fixture
def memory_keyring() -> MemoryKeyring:
    return MemoryKeyring()


@pytest.fixture
def clock() -> Iterator[FrozenClock]:
    with use_clock(FrozenClock(datetime(2024, 1, 17, 10, tzinfo=UTC))) as c:
        assert isinstance(c, FrozenClock)
        yield c


@pytest.fixture
def cimp() -> Iterator[CimpReceiver]:
    with CimpReceiver() as receiver:
        yield receiver


@pytest.fixture
def socks_proxy() -> Iterator[Pproxy]:
    with Pproxy() as proxy:
        yield proxy


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll ``condition`` until it is truthy; return its last value."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    return condition()
