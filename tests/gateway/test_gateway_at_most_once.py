"""Each report id reaches the CIMP at most once, also when it is slow."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import urllib3.exceptions
from gateway_helpers import (
    CIMP_BODY,
    Upstream,
    call_app,
    seal_report,
    serving,
)

from secure_store.demo.socks import free_port
from secure_store.gateway import (
    GatewayApp,
    MemoryReplayCache,
    create_app,
)
from secure_store.gateway.app import _surely_not_sent
from secure_store.transport.envelope import GatewayKey

# Upstream answers long after the gateway stopped waiting for it.
UPSTREAM_TIMEOUT_S = 0.3
UPSTREAM_DELAY_S = 1.0
# The client gives up before the gateway does, as in the field report.
CLIENT_TIMEOUT_S = 0.1


@pytest.fixture
def quick_app(x25519_key: GatewayKey, upstream: Upstream) -> GatewayApp:
    return create_app(
        [x25519_key],
        upstream.url,
        replay_cache=MemoryReplayCache(),
        upstream_timeout_s=UPSTREAM_TIMEOUT_S,
        retry_after_s=17,
    )


@pytest.fixture
def quick_served(quick_app: GatewayApp) -> Iterator[str]:
    with serving(quick_app) as url:
        yield url


def post(url: str, envelope: bytes, timeout_s: float = 10.0) -> int:
    with requests.Session() as session:
        session.trust_env = False
        return session.post(
            url + "/", data=envelope, timeout=timeout_s
        ).status_code


def test_three_posts_of_one_report_to_a_slow_upstream_forward_it_once(
    quick_served: str, upstream: Upstream, x25519_key: GatewayKey
) -> None:
    upstream.delay_s = UPSTREAM_DELAY_S

    statuses = [post(quick_served, seal_report(x25519_key)) for _ in range(3)]

    assert statuses == [503, 204, 204]
    assert upstream.bodies == [CIMP_BODY]


def test_retries_after_the_client_gave_up_are_not_forwarded_again(
    quick_served: str, upstream: Upstream, x25519_key: GatewayKey
) -> None:
    # The tester's case: the client times out and retries at once while
    # the first forward still waits on upstream; the retries wait on its
    # lease, which ends when the gateway's upstream timeout strikes.
    upstream.delay_s = UPSTREAM_DELAY_S
    with pytest.raises(requests.Timeout):
        post(quick_served, seal_report(x25519_key), CLIENT_TIMEOUT_S)
    for _ in range(2):
        # A slow machine may answer a retry in time; either way counts.
        with contextlib.suppress(requests.Timeout):
            post(quick_served, seal_report(x25519_key), CLIENT_TIMEOUT_S)

    # Once every earlier request is done, a last one is a repeat.
    last = post(quick_served, seal_report(x25519_key))

    assert last == 204
    assert upstream.bodies == [CIMP_BODY]


def test_upstream_hanging_up_after_the_request_is_ambiguous(
    quick_app: GatewayApp, upstream: Upstream, x25519_key: GatewayKey
) -> None:
    upstream.raw_answer = b""
    first = call_app(quick_app, seal_report(x25519_key))
    upstream.raw_answer = None

    retry = call_app(quick_app, seal_report(x25519_key))

    assert (first.status, first.json()["error"]) == (503, "ambiguous")
    assert first.headers["Retry-After"] == "17"
    assert retry.status == 204
    assert upstream.bodies == [CIMP_BODY]


def test_a_malformed_upstream_answer_is_ambiguous(
    quick_app: GatewayApp, upstream: Upstream, x25519_key: GatewayKey
) -> None:
    upstream.raw_answer = b"NOT HTTP AT ALL\r\n\r\n"
    first = call_app(quick_app, seal_report(x25519_key))
    upstream.raw_answer = None

    retry = call_app(quick_app, seal_report(x25519_key))

    assert (first.status, first.json()["error"]) == (503, "ambiguous")
    assert retry.status == 204
    assert upstream.bodies == [CIMP_BODY]


def test_a_refused_connection_releases_the_id_for_the_retry(
    x25519_key: GatewayKey, upstream: Upstream
) -> None:
    cache = MemoryReplayCache()
    down = create_app(
        [x25519_key], f"http://127.0.0.1:{free_port()}/", replay_cache=cache
    )
    up = create_app([x25519_key], upstream.url, replay_cache=cache)

    first = call_app(down, seal_report(x25519_key))
    retry = call_app(up, seal_report(x25519_key))

    assert (first.status, first.json()["error"]) == (
        503,
        "upstream-unavailable",
    )
    assert retry.status == 204
    assert upstream.bodies == [CIMP_BODY]


def test_an_ambiguous_forward_logs_outcome_ambiguous_without_payload(
    quick_app: GatewayApp,
    upstream: Upstream,
    x25519_key: GatewayKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.raw_answer = b""

    call_app(quick_app, seal_report(x25519_key))

    lines = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("request ")
    ]
    assert len(lines) == 1
    assert lines[0].startswith(
        "request method=POST status=503 outcome=ambiguous "
    )
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "Main/Settings" not in everything
    assert "music" not in everything


def test_an_unexpected_error_while_forwarding_marks_the_id_forwarded(
    quick_app: GatewayApp,
    upstream: Upstream,
    x25519_key: GatewayKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(payload: bytes) -> Any:
        raise RuntimeError("broke after sending, perhaps")

    monkeypatch.setattr(quick_app, "_forward", explode)
    first = call_app(quick_app, seal_report(x25519_key))
    monkeypatch.undo()

    retry = call_app(quick_app, seal_report(x25519_key))

    assert (first.status, retry.status) == (500, 204)
    assert upstream.requests == []


# -- which requests errors mean "upstream never saw it" -------------------

_URL = "http://127.0.0.1:9/cimp"


def _max_retry(reason: Exception) -> urllib3.exceptions.MaxRetryError:
    return urllib3.exceptions.MaxRetryError(None, _URL, reason)  # type: ignore[arg-type]


_NOT_SENT = {
    "connect timeout": requests.exceptions.ConnectTimeout(
        _max_retry(urllib3.exceptions.ConnectTimeoutError("timed out"))
    ),
    "connection refused": requests.ConnectionError(
        _max_retry(
            urllib3.exceptions.NewConnectionError(
                None,  # type: ignore[arg-type]
                "Failed to establish a new connection: refused",
            )
        )
    ),
    "name not resolved": requests.ConnectionError(
        _max_retry(
            urllib3.exceptions.NameResolutionError(
                "cimp.invalid",
                None,  # type: ignore[arg-type]
                socket.gaierror(-2, "Name or service not known"),
            )
        )
    ),
}

_AMBIGUOUS = {
    "read timeout": requests.exceptions.ReadTimeout(
        urllib3.exceptions.ReadTimeoutError(
            None,  # type: ignore[arg-type]
            _URL,
            "Read timed out.",
        )
    ),
    "reset while awaiting the answer": requests.ConnectionError(
        urllib3.exceptions.ProtocolError(
            "Connection aborted.", ConnectionResetError(104, "reset")
        )
    ),
    "broken chunked answer": requests.exceptions.ChunkedEncodingError(
        urllib3.exceptions.ProtocolError("Response ended prematurely")
    ),
    "TLS failure": requests.exceptions.SSLError(
        _max_retry(urllib3.exceptions.SSLError("bad record mac"))
    ),
    "unknown requests error": requests.RequestException("?"),
}


@pytest.mark.parametrize("name", sorted(_NOT_SENT))
def test_connect_phase_failures_count_as_not_sent(name: str) -> None:
    assert _surely_not_sent(_NOT_SENT[name]) is True


@pytest.mark.parametrize("name", sorted(_AMBIGUOUS))
def test_failures_after_connecting_count_as_maybe_sent(name: str) -> None:
    assert _surely_not_sent(_AMBIGUOUS[name]) is False
