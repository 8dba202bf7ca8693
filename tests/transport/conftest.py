"""Fixtures starting real SOCKS and HTTP servers on 127.0.0.1."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transport_parts import (
    Certificates,
    Script,
    ScriptedServer,
    SilentListener,
    SocksServer,
    make_certificates,
)


@pytest.fixture
def make_socks(tmp_path: Path) -> Iterator[Any]:
    started: list[SocksServer] = []

    def make(kind: str, login: tuple[str, str] | None = None) -> SocksServer:
        server = SocksServer(kind, tmp_path, login)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def pproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SocksServer]:
    server = SocksServer("pproxy", tmp_path_factory.mktemp("pproxy"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def microsocks(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SocksServer]:
    server = SocksServer("microsocks", tmp_path_factory.mktemp("microsocks"))
    yield server
    server.stop()


@pytest.fixture
def silent_listener() -> Iterator[SilentListener]:
    listener = SilentListener()
    yield listener
    listener.stop()


@pytest.fixture
def make_server() -> Iterator[Any]:
    started: list[ScriptedServer] = []

    def make(
        *actions: tuple[Any, ...],
        rest: tuple[Any, ...] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> ScriptedServer:
        script = Script(list(actions))
        if rest is not None:
            script.rest = rest
        server = ScriptedServer(script, tls)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def certificates(
    tmp_path_factory: pytest.TempPathFactory,
) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))
