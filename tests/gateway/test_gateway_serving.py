"""Serving and settings fail with a clear GatewayError, not a traceback."""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from gateway_helpers import Upstream

from secure_store.errors import GatewayError
from secure_store.gateway import (
    GatewayApp,
    MemoryReplayCache,
    create_app,
    listen_url,
    make_server,
    serve,
)
from secure_store.transport.envelope import GatewayKey


class Ready(Exception):
    """Raised by a ready callback to end serve() once it listens."""


@pytest.fixture
def memory_app(x25519_key: GatewayKey, upstream: Upstream) -> GatewayApp:
    return create_app(
        [x25519_key], upstream.url, replay_cache=MemoryReplayCache()
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port of 127.0.0.1 on which another socket listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def serve_until_ready(app: GatewayApp, host: str) -> tuple[str, int]:
    """Run serve() on a free port until it listens; return ready's args."""
    called: list[tuple[str, int]] = []

    def ready(ready_host: str, ready_port: int) -> None:
        called.append((ready_host, ready_port))
        raise Ready

    with pytest.raises(Ready):
        serve(app, host, 0, threads=1, ready=ready)
    (address,) = called
    return address


# -- listening ------------------------------------------------------------


def test_make_server_on_a_port_in_use_says_so(
    memory_app: GatewayApp, busy_port: int
) -> None:
    with pytest.raises(GatewayError) as raised:
        make_server(memory_app, "127.0.0.1", busy_port)

    assert str(raised.value) == (
        f"cannot listen on 127.0.0.1:{busy_port}: the port is already in "
        "use (is a gateway running?)"
    )


def test_serve_on_a_port_in_use_raises_gateway_error(
    memory_app: GatewayApp, busy_port: int
) -> None:
    with pytest.raises(GatewayError, match="already in use"):
        serve(memory_app, "127.0.0.1", busy_port)


@pytest.mark.parametrize(
    "host",
    [
        # Refused by Python's IDNA codec before any name lookup (an
        # ASCII name would go to the resolver, off loopback).
        "\u00e9" * 64,
        # Refused by the gateway itself.
        "bad host",
        "",
    ],
)
def test_an_invalid_host_raises_gateway_error(
    memory_app: GatewayApp, host: str
) -> None:
    with pytest.raises(GatewayError, match="invalid host"):
        make_server(memory_app, host, 0)


@pytest.mark.parametrize("port", [65_536, -1])
def test_a_port_outside_the_tcp_range_raises_gateway_error(
    memory_app: GatewayApp, port: int
) -> None:
    with pytest.raises(GatewayError, match="no such port"):
        make_server(memory_app, "127.0.0.1", port)


@pytest.mark.parametrize("threads", [0, -1])
def test_make_server_refuses_fewer_than_one_thread(
    memory_app: GatewayApp, threads: int
) -> None:
    with pytest.raises(GatewayError, match="threads must be at least 1"):
        make_server(memory_app, "127.0.0.1", 0, threads=threads)


def test_serve_refuses_fewer_than_one_thread(memory_app: GatewayApp) -> None:
    with pytest.raises(GatewayError, match="threads must be at least 1"):
        serve(memory_app, "127.0.0.1", 0, threads=0)


# -- saying where it listens ----------------------------------------------


def test_serve_logs_listening_once_at_info_and_prints_nothing(
    memory_app: GatewayApp,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)

    host, port = serve_until_ready(memory_app, "127.0.0.1")

    listening = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if "listening" in r.getMessage()
    ]
    assert host == "127.0.0.1"
    assert listening == [
        ("INFO", f"gateway listening on http://127.0.0.1:{port}/")
    ]
    assert capsys.readouterr() == ("", "")


@pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback here")
def test_serve_logs_an_ipv6_address_in_brackets(
    memory_app: GatewayApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="secure_store.gateway")

    host, port = serve_until_ready(memory_app, "::1")

    messages = [r.getMessage() for r in caplog.records]
    assert host == "::1"
    assert f"gateway listening on http://[::1]:{port}/" in messages


def test_serve_closes_the_socket_when_ready_fails(
    memory_app: GatewayApp,
) -> None:
    _, port = serve_until_ready(memory_app, "127.0.0.1")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # fails if serve left it open


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("127.0.0.1", 8080, "http://127.0.0.1:8080/"),
        ("::1", 8080, "http://[::1]:8080/"),
        ("[::1]", 80, "http://[::1]:80/"),
        ("localhost", 1, "http://localhost:1/"),
    ],
)
def test_listen_url_brackets_ipv6_addresses(
    host: str, port: int, url: str
) -> None:
    assert listen_url(host, port) == url


# -- settings -------------------------------------------------------------


@pytest.mark.parametrize("timeout_s", [0, -1.0, math.nan, math.inf])
def test_an_upstream_timeout_that_is_not_finite_and_positive_is_refused(
    x25519_key: GatewayKey, upstream: Upstream, timeout_s: float
) -> None:
    with pytest.raises(
        GatewayError, match="upstream_timeout_s must be a finite number"
    ):
        create_app(
            [x25519_key],
            upstream.url,
            replay_cache=MemoryReplayCache(),
            upstream_timeout_s=timeout_s,
        )


@pytest.mark.parametrize("limit", [0, -5])
def test_a_body_limit_below_one_byte_is_refused(
    x25519_key: GatewayKey, upstream: Upstream, limit: int
) -> None:
    with pytest.raises(GatewayError, match="max_body_bytes must be"):
        create_app(
            [x25519_key],
            upstream.url,
            replay_cache=MemoryReplayCache(),
            max_body_bytes=limit,
        )


def test_bad_settings_are_refused_before_the_default_cache_is_created(
    x25519_key: GatewayKey,
    upstream: Upstream,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    with pytest.raises(GatewayError):
        create_app([x25519_key], upstream.url, upstream_timeout_s=math.nan)

    assert not (tmp_path / "state").exists()
