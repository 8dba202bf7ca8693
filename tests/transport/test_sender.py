"""The sender against real SOCKS servers and HTTP servers on 127.0.0.1."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from transport_parts import (
    Certificates,
    ScriptedServer,
    SilentListener,
    SocksServer,
    TricklingSocksProxy,
    TricklingTlsServer,
    free_port,
)

from secure_store.errors import (
    ProxyConfigError,
    ProxyRefusedError,
    ProxyUnreachableError,
    RejectedError,
    SendTimeoutError,
    ServerFailureError,
    ServerUnreachableError,
)
from secure_store.transport.proxy import parse_proxy_url
from secure_store.transport.sender import Sender

BODY = b"\x01envelope bytes\x00" * 64
TIMEOUT_S = 0.5
ATTEMPTS = 3
# Process scheduling, proxy start-up and the watchdog's wake-up.
MARGIN_S = 0.5
BOUND_S = TIMEOUT_S * ATTEMPTS + MARGIN_S

MakeServer = Callable[..., ScriptedServer]
MakeSocks = Callable[..., SocksServer]


@pytest.fixture
def sender_for() -> Iterator[Callable[..., Sender]]:
    made: list[Sender] = []

    def make(proxy_url: str, **kwargs: Any) -> Sender:
        kwargs.setdefault("max_attempts", ATTEMPTS)
        kwargs.setdefault("backoff_factor_s", 0.05)
        kwargs.setdefault("backoff_jitter_s", 0.05)
        kwargs.setdefault("allow_insecure_http", True)
        sender = Sender(parse_proxy_url(proxy_url), **kwargs)
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.close()


def _timed(action: Callable[[], object]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        action()
    except BaseException as exc:  # the caller checks which
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


# -- the happy path ----------------------------------------------------------


def test_post_delivers_the_exact_body_as_octet_stream(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server()

    sender_for(pproxy.url).post(server.url, BODY, TIMEOUT_S)

    assert len(server.received) == 1
    request = server.received[0]
    assert (request.method, request.path) == ("POST", "/report")
    assert request.body == BODY
    assert request.headers["content-type"] == "application/octet-stream"
    assert request.headers["user-agent"] == "secure-store"
    assert "cookie" not in request.headers


@pytest.mark.parametrize("kind", ["pproxy", "microsocks"])
def test_proxy_log_shows_the_server_name_never_an_address(
    kind: str,
    make_socks: MakeSocks,
    make_server: MakeServer,
    sender_for: Any,
) -> None:
    proxy = make_socks(kind)
    server = make_server()

    sender_for(proxy.url).post(server.url, BODY, TIMEOUT_S)

    lines = proxy.log_lines()
    assert any(f"localhost:{server.port}" in line for line in lines), lines
    assert not any(f"127.0.0.1:{server.port}" in line for line in lines)
    assert not any(f"::1]:{server.port}" in line for line in lines)


def test_each_send_offers_the_proxy_fresh_credentials(
    make_socks: MakeSocks, make_server: MakeServer, sender_for: Any
) -> None:
    # This pproxy demands a login the URL does not carry, so it logs the
    # credentials each connection offered when it turns them away.
    proxy = make_socks("pproxy", login=("alice", "s3cret"))
    server = make_server()
    sender = sender_for(proxy.url, max_attempts=1)

    for _ in range(2):
        with pytest.raises(ProxyRefusedError):
            sender.post(server.url, BODY, TIMEOUT_S)

    offered = re.findall(
        r"Unauthorized SOCKS b'([0-9a-f]+)':b'([0-9a-f]+)'",
        "\n".join(proxy.log_lines()),
    )
    assert len(offered) == 2
    assert offered[0] != offered[1]
    assert offered[0][0] != offered[1][0]
    assert offered[0][1] != offered[1][1]
    assert {len(user) for user, _ in offered} == {32}
    assert server.received == []


def test_credentials_in_the_url_log_in_to_an_authenticating_proxy(
    make_socks: MakeSocks, make_server: MakeServer, sender_for: Any
) -> None:
    proxy = make_socks("pproxy", login=("alice", "s3cret"))
    server = make_server()
    sender = sender_for(proxy.url_with_login())

    sender.post(server.url, BODY, TIMEOUT_S)
    sender.post(server.url, BODY, TIMEOUT_S)

    assert len(server.received) == 2
    assert not any("Unauthorized" in line for line in proxy.log_lines())


def test_environment_proxy_settings_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
    microsocks: SocksServer,
    silent_listener: SilentListener,
    make_server: MakeServer,
    sender_for: Any,
) -> None:
    decoy = f"http://127.0.0.1:{silent_listener.port}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, decoy)
        monkeypatch.setenv(name.lower(), decoy)
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("no_proxy", "*")
    server = make_server()
    microsocks.mark()

    sender_for(microsocks.url).post(server.url, BODY, TIMEOUT_S)

    assert len(server.received) == 1
    assert silent_listener.accepted == 0
    assert f"connected to localhost:{server.port}" in "\n".join(
        microsocks.log_lines()
    )


def test_redirects_are_not_followed(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    elsewhere = make_server()
    server = make_server(("answer", 302, {"Location": elsewhere.url}))

    _, error = _timed(lambda: sender_for(pproxy.url).post(server.url, BODY, 1))

    assert isinstance(error, RejectedError)
    assert error.status == 302
    assert str(error).startswith("HTTP Error 302: ")
    assert "redirects are not followed" in str(error)
    assert elsewhere.received == []


def test_cookies_set_by_the_server_are_not_sent_back(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server(("answer", 204, {"Set-Cookie": "track=me; Path=/"}))
    sender = sender_for(pproxy.url)

    sender.post(server.url, BODY, TIMEOUT_S)
    sender.post(server.url, BODY, TIMEOUT_S)

    assert "cookie" not in server.received[1].headers


def test_plain_http_server_is_refused_before_connecting(
    pproxy: SocksServer, make_server: MakeServer
) -> None:
    server = make_server()
    sender = Sender(parse_proxy_url(pproxy.url))
    pproxy.mark()

    with pytest.raises(ProxyConfigError, match="plain http"):
        sender.post(server.url, BODY, TIMEOUT_S)
    assert server.received == []
    assert pproxy.log_lines() == []


# -- faults ------------------------------------------------------------------


def test_proxy_down_is_proxy_unreachable(
    make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server()
    closed_port = free_port()

    elapsed, error = _timed(
        lambda: sender_for(f"socks5h://127.0.0.1:{closed_port}").post(
            server.url, BODY, TIMEOUT_S
        )
    )

    assert isinstance(error, ProxyUnreachableError)
    assert "connection refused" in str(error)
    assert "3 attempts" in str(error)
    assert elapsed < BOUND_S
    assert server.received == []


def test_proxy_refusing_our_login_is_proxy_refused(
    make_socks: MakeSocks, make_server: MakeServer, sender_for: Any
) -> None:
    proxy = make_socks("microsocks", login=("alice", "s3cret"))
    server = make_server()

    elapsed, error = _timed(
        lambda: sender_for(
            f"socks5h://alice:wrong@127.0.0.1:{proxy.port}"
        ).post(server.url, BODY, TIMEOUT_S)
    )

    assert isinstance(error, ProxyRefusedError)
    assert "refused our SOCKS login" in str(error)
    assert "wrong" not in str(error)
    assert elapsed < BOUND_S


def test_proxy_that_never_answers_the_handshake_times_out(
    silent_listener: SilentListener, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server()

    elapsed, error = _timed(
        lambda: sender_for(f"socks5h://127.0.0.1:{silent_listener.port}").post(
            server.url, BODY, TIMEOUT_S
        )
    )

    assert isinstance(error, SendTimeoutError)
    assert "SOCKS handshake" in str(error) or "deadline" in str(error)
    assert TIMEOUT_S * ATTEMPTS - 0.1 <= elapsed < BOUND_S
    assert silent_listener.accepted == ATTEMPTS


def test_hanging_handshake_ends_at_a_shorter_deadline(
    silent_listener: SilentListener, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server()
    sender = sender_for(
        f"socks5h://127.0.0.1:{silent_listener.port}", deadline_s=0.8
    )

    elapsed, error = _timed(lambda: sender.post(server.url, BODY, 5.0))

    assert isinstance(error, SendTimeoutError)
    assert 0.7 <= elapsed < 0.8 + MARGIN_S


def test_server_that_hangs_times_out(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server(rest=("hang",))

    elapsed, error = _timed(
        lambda: sender_for(pproxy.url).post(server.url, BODY, TIMEOUT_S)
    )

    assert isinstance(error, SendTimeoutError)
    assert TIMEOUT_S * ATTEMPTS - 0.1 <= elapsed < BOUND_S
    # Read timeouts are retried: the gateway drops repeated report ids.
    assert len(server.received) == ATTEMPTS


def test_server_that_trickles_bytes_is_cut_off_at_the_deadline(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    # One byte every 0.2 s never trips a 0.5 s read timeout.
    server = make_server(rest=("trickle", 0.2))

    elapsed, error = _timed(
        lambda: sender_for(pproxy.url).post(server.url, BODY, TIMEOUT_S)
    )

    assert isinstance(error, SendTimeoutError)
    assert "deadline" in str(error)
    assert TIMEOUT_S * ATTEMPTS - 0.1 <= elapsed < BOUND_S


def test_answer_cut_off_after_its_status_line_is_a_timeout(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    # "HTTP/1.1 200 OK" arrives in time, the headers never end: a cut
    # connection must not read as a complete 200 answer.
    server = make_server(rest=("trickle", 0.05))

    elapsed, error = _timed(
        lambda: sender_for(pproxy.url).post(server.url, BODY, TIMEOUT_S)
    )

    assert isinstance(error, SendTimeoutError)
    assert TIMEOUT_S * ATTEMPTS - 0.1 <= elapsed < BOUND_S


def test_503_twice_then_204_succeeds_on_the_third_attempt(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server(("answer", 503, {}), ("answer", 503, {}))

    elapsed, error = _timed(
        lambda: sender_for(pproxy.url).post(server.url, BODY, TIMEOUT_S)
    )

    assert error is None
    assert [r.action for r in server.received] == ["answer"] * 3
    assert [r.body for r in server.received] == [BODY] * 3
    assert elapsed < BOUND_S


def test_503_every_time_is_a_server_failure_after_all_attempts(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server(
        rest=("answer", 503, {"body": b"upstream CIMP is down"})
    )

    elapsed, error = _timed(
        lambda: sender_for(pproxy.url).post(server.url, BODY, TIMEOUT_S)
    )

    assert isinstance(error, ServerFailureError)
    assert error.status == 503
    assert str(error) == (
        "HTTP Error 503: Service Unavailable: upstream CIMP is down "
        "(3 attempts)"
    )
    assert len(server.received) == ATTEMPTS
    assert elapsed < BOUND_S


def test_429_with_retry_after_1_waits_a_second_then_succeeds(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server(("answer", 429, {"Retry-After": "1"}))
    sender = sender_for(pproxy.url)

    elapsed, error = _timed(lambda: sender.post(server.url, BODY, 2.0))

    assert error is None
    assert len(server.received) == 2
    assert 1.0 <= elapsed < 1.0 + MARGIN_S


def test_retry_after_beyond_the_deadline_fails_at_once(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server(rest=("answer", 503, {"Retry-After": "120"}))

    elapsed, error = _timed(
        lambda: sender_for(pproxy.url).post(server.url, BODY, TIMEOUT_S)
    )

    assert isinstance(error, ServerFailureError)
    assert error.status == 503
    assert "retrying after 120.0 s would pass the deadline" in str(error)
    assert len(server.received) == 1
    assert elapsed < MARGIN_S


def test_400_is_rejected_at_once_with_the_gateway_reason(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server(
        ("answer", 400, {"body": b"envelope failed to open\n"})
    )

    _, error = _timed(
        lambda: sender_for(pproxy.url).post(server.url, BODY, TIMEOUT_S)
    )

    assert isinstance(error, RejectedError)
    assert error.status == 400
    assert error.retryable is False
    assert str(error) == (
        "HTTP Error 400: Bad Request: envelope failed to open (1 attempt)"
    )
    assert len(server.received) == 1


def test_connection_reset_mid_body_is_retried(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server(("reset",))

    elapsed, error = _timed(
        lambda: sender_for(pproxy.url).post(server.url, BODY, TIMEOUT_S)
    )

    assert error is None
    assert [r.action for r in server.received] == ["reset", "answer"]
    assert server.received[1].body == BODY
    assert elapsed < BOUND_S


def test_connection_reset_every_time_is_server_unreachable(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server(rest=("reset",))

    elapsed, error = _timed(
        lambda: sender_for(pproxy.url).post(server.url, BODY, TIMEOUT_S)
    )

    assert isinstance(error, ServerUnreachableError)
    assert "was lost before an answer" in str(error)
    assert len(server.received) == ATTEMPTS
    assert elapsed < BOUND_S


def test_server_port_closed_behind_the_proxy_is_server_unreachable(
    microsocks: SocksServer, sender_for: Any
) -> None:
    closed_port = free_port()

    elapsed, error = _timed(
        lambda: sender_for(microsocks.url).post(
            f"http://localhost:{closed_port}/report", BODY, TIMEOUT_S
        )
    )

    assert isinstance(error, ServerUnreachableError)
    assert "could not reach localhost" in str(error)
    assert elapsed < BOUND_S


# -- TLS ---------------------------------------------------------------------


def test_https_server_is_reached_through_the_proxy(
    pproxy: SocksServer,
    make_server: MakeServer,
    certificates: Certificates,
) -> None:
    server = make_server(tls=certificates.server_context)
    sender = Sender(
        parse_proxy_url(pproxy.url), ca_bundle=str(certificates.ca_path)
    )

    try:
        sender.post(server.url, BODY, TIMEOUT_S)
    finally:
        sender.close()

    assert server.url.startswith("https://localhost:")
    assert [r.body for r in server.received] == [BODY]


def test_https_server_with_an_untrusted_certificate_is_refused(
    pproxy: SocksServer,
    make_server: MakeServer,
    certificates: Certificates,
) -> None:
    server = make_server(tls=certificates.server_context)
    sender = Sender(parse_proxy_url(pproxy.url))

    try:
        _, error = _timed(lambda: sender.post(server.url, BODY, TIMEOUT_S))
    finally:
        sender.close()

    assert isinstance(error, ServerUnreachableError)
    assert "TLS with localhost failed" in str(error)
    assert "(1 attempt)" in str(error)
    assert server.received == []


def test_https_server_that_trickles_is_cut_off_at_the_deadline(
    pproxy: SocksServer,
    make_server: MakeServer,
    certificates: Certificates,
) -> None:
    server = make_server(
        rest=("trickle", 0.2), tls=certificates.server_context
    )
    sender = Sender(
        parse_proxy_url(pproxy.url),
        ca_bundle=str(certificates.ca_path),
        max_attempts=ATTEMPTS,
    )

    try:
        elapsed, error = _timed(
            lambda: sender.post(server.url, BODY, TIMEOUT_S)
        )
    finally:
        sender.close()

    assert isinstance(error, SendTimeoutError)
    assert TIMEOUT_S * ATTEMPTS - 0.1 <= elapsed < BOUND_S


def test_retries_within_one_send_keep_its_credentials(
    make_socks: MakeSocks, make_server: MakeServer, sender_for: Any
) -> None:
    proxy = make_socks("pproxy", login=("alice", "s3cret"))
    server = make_server()

    with pytest.raises(ProxyRefusedError):
        sender_for(proxy.url).post(server.url, BODY, TIMEOUT_S)

    offered = re.findall(
        r"Unauthorized SOCKS b'([0-9a-f]+)':b'([0-9a-f]+)'",
        "\n".join(proxy.log_lines()),
    )
    assert len(offered) == ATTEMPTS
    assert len(set(offered)) == 1


def test_socks5_when_allowed_lets_this_machine_resolve_the_name(
    make_socks: MakeSocks, make_server: MakeServer
) -> None:
    # The counterpart of the socks5h test: here the address does leak.
    proxy = make_socks("pproxy")
    server = make_server()
    config = parse_proxy_url(
        f"socks5://127.0.0.1:{proxy.port}", allow_socks5=True
    )

    with Sender(config, allow_insecure_http=True) as sender:
        sender.post(server.url, BODY, TIMEOUT_S)

    lines = proxy.log_lines()
    assert not any(f"localhost:{server.port}" in line for line in lines)
    assert any(f"127.0.0.1:{server.port}" in line for line in lines), lines


def test_session_refuses_a_request_without_the_proxy(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server()
    sender = sender_for(pproxy.url)

    with pytest.raises(ProxyConfigError, match="without the SOCKS proxy"):
        sender._session.post(server.url, data=BODY, timeout=1)
    assert server.received == []


def test_concurrent_posts_are_serialised_and_all_delivered(
    pproxy: SocksServer, make_server: MakeServer, sender_for: Any
) -> None:
    server = make_server()
    sender = sender_for(pproxy.url)
    errors: list[BaseException] = []

    def post() -> None:
        try:
            sender.post(server.url, BODY, 2.0)
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert errors == []
    assert len(server.received) == 4


def test_proxy_that_trickles_the_handshake_is_cut_off_at_the_deadline(
    make_server: MakeServer, sender_for: Any
) -> None:
    # 12 bytes, one per 0.3 s: 3.6 s, though no read waits 0.5 s.
    proxy = TricklingSocksProxy(delay_s=0.3)
    server = make_server()

    try:
        elapsed, error = _timed(
            lambda: sender_for(f"socks5h://127.0.0.1:{proxy.port}").post(
                server.url, BODY, TIMEOUT_S
            )
        )
    finally:
        proxy.stop()

    assert isinstance(error, SendTimeoutError)
    assert "deadline" in str(error)
    assert TIMEOUT_S * ATTEMPTS - 0.1 <= elapsed < BOUND_S
    assert proxy.accepted == 1


def test_tls_handshake_that_trickles_is_cut_off_at_the_deadline(
    pproxy: SocksServer, sender_for: Any
) -> None:
    # A TLS record header promising 16 KiB, then one byte per 0.2 s.
    server = TricklingTlsServer(delay_s=0.2)

    try:
        elapsed, error = _timed(
            lambda: sender_for(pproxy.url).post(
                f"https://localhost:{server.port}/report", BODY, TIMEOUT_S
            )
        )
    finally:
        server.stop()

    assert isinstance(error, SendTimeoutError)
    assert "deadline" in str(error)
    assert TIMEOUT_S * ATTEMPTS - 0.1 <= elapsed < BOUND_S
