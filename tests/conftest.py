"""Fixtures shared by all tests: keyrings, clocks, real loopback servers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support import MemoryKeyring

from secure_store.cleaninsights.clock import FrozenClock, use_clock
from secure_store.demo.receiver import CimpReceiver
from secure_store.demo.socks import Pproxy


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runs",
        type=int,
        default=None,
        help="how many times each crash harness kills its child "
        "(default: 200 for persist, 100 for rotation)",
    )


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
