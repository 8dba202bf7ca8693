"""Reports through real Tor on 127.0.0.1, and the Tor readiness check."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from secure_store.demo.receiver import CimpReceiver
from secure_store.demo.socks import Pproxy
from secure_store.errors import (
    ProxyConfigError,
    ProxyRefusedError,
    ProxyUnreachableError,
    TransportError,
)
from secure_store.gateway import MemoryReplayCache, create_app, make_server
from secure_store.secure_store import SecureStore
from secure_store.transport.envelope import (
    REPORT_ID_BYTES,
    GatewayKey,
    Suite,
    seal,
)
from secure_store.transport.proxy import parse_proxy_url
from secure_store.transport.sender import Sender
from secure_store.transport.tor import ProxyReport, check_proxy

try:
    from .tornet import LoneTor, TorNetwork
except ImportError:
    from tornet import LoneTor, TorNetwork  # type: ignore[no-redef]

LOOPBACK = "127.0.0.1"
SEND_TIMEOUT_S = 60.0  # research: an occasional first onion stream ~9 s
SILENT_SERVER_TIMEOUT_S = 1.0
N_RELAYS = 6  # 3 authorities + 2 relays + 1 exit, the fixture's default
STREAM_EVENT_WAIT_S = 5.0
# The client answers a refused exit connection late (it tries again), so
# the unreachable-target check gives up after this.
TARGET_TIMEOUT_S = 3.0


def a_cimp_report(action: str) -> dict[str, Any]:
    return {
        "idsite": 1,
        "visits": [
            {
                "action_name": action,
                "period_start": 1_700_000_000,
                "period_end": 1_700_086_400,
                "times": 1,
            }
        ],
        "events": [],
    }


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


# -- the readiness check against one real, unbootstrapped tor ----------------


def test_check_proxy_knows_tor_by_its_answer_to_plain_http(
    lone_tor: LoneTor,
) -> None:
    report = check_proxy(lone_tor.proxy_url())

    assert report.reachable is True
    assert report.is_tor is True
    assert report.tor_evidence == (
        "its SOCKS port answers HTTP with 'Tor is not an HTTP Proxy'"
    )
    assert report.bootstrap_percent is None


def test_check_proxy_reads_bootstrap_from_the_control_port(
    lone_tor: LoneTor,
) -> None:
    report = check_proxy(
        lone_tor.proxy_url(), control_port=lone_tor.control_port
    )

    assert report.is_tor is True
    assert report.tor_evidence == (
        f"control port 127.0.0.1:{lone_tor.control_port} lists this SocksPort"
    )
    # Its only authority is a closed port: it stays at 0% or 5%.
    assert report.bootstrap_percent in (0, 5)
    assert report.circuit_established is False
    assert report.ok is False


def test_check_proxy_authenticates_with_a_given_cookie_file(
    lone_tor: LoneTor,
) -> None:
    report = check_proxy(
        lone_tor.proxy_url(),
        control_port=lone_tor.control_port,
        control_cookie_path=lone_tor.cookie_path,
    )

    assert report.problems == ()
    assert report.tor_version is not None


def test_check_proxy_reports_a_control_port_that_refuses_the_cookie(
    lone_tor: LoneTor, tmp_path: Path
) -> None:
    wrong_cookie = tmp_path / "cookie"
    wrong_cookie.write_bytes(b"\0" * 32)

    report = check_proxy(
        lone_tor.proxy_url(),
        control_port=lone_tor.control_port,
        control_cookie_path=wrong_cookie,
    )

    assert len(report.problems) == 1
    assert report.problems[0].startswith(
        f"control port 127.0.0.1:{lone_tor.control_port} refused us"
    )
    assert report.ok is False


def test_check_proxy_reports_an_unreachable_control_port(
    lone_tor: LoneTor,
) -> None:
    closed = free_loopback_port()

    report = check_proxy(lone_tor.proxy_url(), control_port=closed)

    assert report.problems == (
        f"control port 127.0.0.1:{closed} unreachable: Connection refused",
    )
    assert report.is_tor is True  # still known from the HTTP probe


def test_check_proxy_times_the_socks_handshake(lone_tor: LoneTor) -> None:
    report = check_proxy(lone_tor.proxy_url())

    assert report.socks_method == "no authentication"
    assert 0 < report.handshake_ms < 1000


def test_check_proxy_text_names_every_finding(lone_tor: LoneTor) -> None:
    text = check_proxy(
        lone_tor.proxy_url(), control_port=lone_tor.control_port
    ).describe()

    assert [line.split()[0] for line in text.splitlines()] == [
        "proxy",
        "reachable",
        "tor",
        "bootstrap",
        "ok",
    ]


def test_proxy_report_describes_itself_in_aligned_lines() -> None:
    report = ProxyReport(
        proxy="socks5h://127.0.0.1:9050",
        reachable=True,
        socks_method="no authentication",
        connect_ms=0.41,
        handshake_ms=0.16,
        is_tor=True,
        tor_evidence="control port 127.0.0.1:9051 lists this SocksPort",
        tor_version="0.4.9.11",
        control_port="127.0.0.1:9051",
        bootstrap_percent=100,
        bootstrap_summary="done: Done",
        circuit_established=True,
        target_url="http://example.onion/",
        target_status=204,
        target_ms=160.4,
    )

    assert report.describe() == (
        "proxy      socks5h://127.0.0.1:9050\n"
        "reachable  yes (SOCKS5, no authentication; connect 0.4 ms, "
        "handshake 0.2 ms)\n"
        "tor        yes (control port 127.0.0.1:9051 lists this SocksPort);"
        " Tor 0.4.9.11\n"
        "bootstrap  100% (done: Done); circuit established\n"
        "target     http://example.onion/ -> HTTP 204 in 160 ms\n"
        "ok         yes"
    )
    assert report.to_dict()["ok"] is True


# -- the readiness check against things that are not Tor ---------------------


def test_check_proxy_says_a_plain_socks_server_is_not_tor() -> None:
    with Pproxy() as proxy:
        report = check_proxy(proxy.url)

    assert report.reachable is True
    assert report.socks_method == "username/password"
    assert report.is_tor is False
    assert report.ok is False


def test_check_proxy_raises_when_nothing_listens() -> None:
    closed = free_loopback_port()

    with pytest.raises(ProxyUnreachableError) as caught:
        check_proxy(f"socks5h://127.0.0.1:{closed}")

    assert str(caught.value) == (
        f"nothing answered at 127.0.0.1:{closed}: Connection refused"
    )


def _answer_once(listener: socket.socket, answer: bytes) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.recv(64)
        conn.sendall(answer)


def test_check_proxy_refuses_a_server_that_does_not_speak_socks5() -> None:
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen()
        port = listener.getsockname()[1]
        threading.Thread(
            target=_answer_once,
            args=(listener, b"HTTP/1.1 400 Bad Request\r\n\r\n"),
            daemon=True,
        ).start()

        with pytest.raises(ProxyRefusedError) as caught:
            check_proxy(f"socks5h://127.0.0.1:{port}")

    assert str(caught.value) == (
        f"127.0.0.1:{port} answered, but not as a SOCKS5 proxy (b'HT')"
    )


def test_check_proxy_gives_up_on_a_silent_server_in_time() -> None:
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()

        with pytest.raises(ProxyRefusedError, match="did not answer"):
            check_proxy(
                f"socks5h://127.0.0.1:{port}",
                timeout_s=SILENT_SERVER_TIMEOUT_S,
            )

        assert time.monotonic() - started < SILENT_SERVER_TIMEOUT_S + 1


def test_check_proxy_refuses_a_proxy_url_that_is_not_socks() -> None:
    with pytest.raises(ProxyConfigError, match="socks5h://"):
        check_proxy("http://127.0.0.1:8080")


def test_tor_module_imports_without_stem() -> None:
    code = (
        "import sys; sys.modules['stem'] = None; "
        "import secure_store.transport.tor as t; print(t.CHECK_TIMEOUT_S)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )

    assert (result.returncode, result.stdout) == (0, "10.0\n")


def test_control_port_check_without_stem_says_what_to_install(
    lone_tor: LoneTor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "stem.control", None)

    with pytest.raises(TransportError, match=r"secure-store\[tor\]"):
        check_proxy(lone_tor.proxy_url(), control_port=lone_tor.control_port)


# -- the private Tor network ------------------------------------------------


@dataclass
class GatewayStack:
    """Receiver <- gateway on 127.0.0.1, and the gateway's onion address."""

    receiver: CimpReceiver
    key: GatewayKey
    port: int
    onion: str

    @property
    def loopback_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def onion_url(self) -> str:
        return f"http://{self.onion}/"


@pytest.fixture(scope="module")
def gateway_stack(tor_network: TorNetwork) -> Iterator[GatewayStack]:
    receiver = CimpReceiver().start()
    key = GatewayKey.generate(Suite.PQ_HYBRID)
    app = create_app([key], receiver.url, replay_cache=MemoryReplayCache())
    server = make_server(app, LOOPBACK, 0)
    port = int(getattr(server, "effective_port"))  # noqa: B009
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        onion = tor_network.add_onion(port)
        yield GatewayStack(receiver, key, port, onion)
    finally:
        server.close()
        thread.join(5)
        app.close()
        receiver.stop()


def send_report(
    proxy_url: str, stack: GatewayStack, url: str, report: dict[str, Any]
) -> None:
    """Seal ``report`` to the gateway and POST it through the proxy with
    the project's Sender (returns on 2xx, raises SendError otherwise)."""
    envelope = seal(
        stack.key.key_config(),
        secrets.token_bytes(REPORT_ID_BYTES),
        json.dumps(report).encode(),
    )
    # allow_insecure_http: the loopback gateway behind the exit is plain
    # http://, as no CA is set up for it; onion URLs need no exception.
    with Sender(parse_proxy_url(proxy_url), allow_insecure_http=True) as s:
        s.post(url, envelope, SEND_TIMEOUT_S)


class StreamLog:
    """The client's STREAM SUCCEEDED events: (SOCKS username, circuit)."""

    def __init__(self, network: TorNetwork) -> None:
        self._controller = network.controller("client")
        self._lock = threading.Lock()
        self.streams: list[tuple[str, str]] = []
        self._controller.add_event_listener(self._on_stream, "STREAM")

    def _on_stream(self, event: Any) -> None:
        if event.status == "SUCCEEDED":
            user = event.keyword_args.get("SOCKS_USERNAME", "")
            with self._lock:
                self.streams.append((user.strip('"'), event.circ_id))

    def circuit_of(self, username: str) -> str:
        """The circuit of ``username``'s stream (waits for the event)."""
        deadline = time.monotonic() + STREAM_EVENT_WAIT_S
        while time.monotonic() < deadline:
            with self._lock:
                hits = [c for u, c in self.streams if u == username]
            if hits:
                return hits[-1]
            time.sleep(0.05)
        raise AssertionError(f"no stream event for {username}")

    def mark(self) -> int:
        with self._lock:
            return len(self.streams)

    def since(self, mark: int, count: int) -> list[tuple[str, str]]:
        """The first ``count`` streams after ``mark`` (waits for them)."""
        deadline = time.monotonic() + STREAM_EVENT_WAIT_S
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.streams) >= mark + count:
                    return self.streams[mark : mark + count]
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} stream events")

    def close(self) -> None:
        self._controller.remove_event_listener(self._on_stream)


@pytest.mark.slow
def test_consensus_lists_only_our_loopback_relays(
    tor_network: TorNetwork,
) -> None:
    assert tor_network.consensus_addresses() == ["127.0.0.1"]
    assert tor_network.consensus_relay_count() == N_RELAYS


@pytest.mark.slow
def test_consensus_is_signed_only_by_our_loopback_authorities(
    tor_network: TorNetwork,
) -> None:
    assert tor_network.consensus_dir_sources() == ["127.0.0.1"] * 3


@pytest.mark.slow
def test_check_proxy_reports_the_private_tor_client_bootstrapped(
    tor_network: TorNetwork,
) -> None:
    report = check_proxy(
        tor_network.proxy_url(),
        control_port=tor_network.client_control_port,
    )

    assert report.is_tor is True
    assert report.bootstrap_percent == 100
    assert report.bootstrap_summary == "done: Done"
    assert report.circuit_established is True
    assert report.ok is True


@pytest.mark.slow
def test_check_proxy_times_a_request_through_the_exit(
    tor_network: TorNetwork, gateway_stack: GatewayStack
) -> None:
    report = check_proxy(
        tor_network.proxy_url(), target_url=gateway_stack.loopback_url
    )

    # The gateway answers GET / with 405: what matters is that it answered.
    assert report.target_error is None
    assert report.target_status == 405
    assert report.target_ms is not None and report.target_ms > 0


@pytest.mark.slow
def test_report_reaches_the_receiver_through_the_onion_gateway(
    tor_network: TorNetwork, gateway_stack: GatewayStack
) -> None:
    before = len(gateway_stack.receiver.received)

    send_report(
        tor_network.proxy_url(),
        gateway_stack,
        gateway_stack.onion_url,
        a_cimp_report("via-onion"),
    )

    received = gateway_stack.receiver.received[before:]
    assert [r["visits"][0]["action_name"] for r in received] == ["via-onion"]


@pytest.mark.slow
def test_report_reaches_the_receiver_through_the_exit(
    tor_network: TorNetwork, gateway_stack: GatewayStack
) -> None:
    before = len(gateway_stack.receiver.received)

    send_report(
        tor_network.proxy_url(),
        gateway_stack,
        gateway_stack.loopback_url,
        a_cimp_report("via-exit"),
    )

    received = gateway_stack.receiver.received[before:]
    assert [r["visits"][0]["action_name"] for r in received] == ["via-exit"]


@pytest.fixture
def stream_log(tor_network: TorNetwork) -> Iterator[StreamLog]:
    log = StreamLog(tor_network)
    try:
        yield log
    finally:
        log.close()


@pytest.mark.slow
@pytest.mark.parametrize("route", ["exit", "onion"])
def test_different_socks_credentials_use_different_circuits(
    tor_network: TorNetwork,
    gateway_stack: GatewayStack,
    stream_log: StreamLog,
    route: str,
) -> None:
    url = (
        gateway_stack.loopback_url
        if route == "exit"
        else gateway_stack.onion_url
    )
    alice, bob = f"alice-{route}", f"bob-{route}"

    for user in (alice, bob):
        send_report(
            tor_network.proxy_url(user, "pw"),
            gateway_stack,
            url,
            a_cimp_report(f"isolation-{user}"),
        )

    assert stream_log.circuit_of(alice) != stream_log.circuit_of(bob)


@pytest.mark.slow
def test_check_proxy_reports_a_target_the_exit_cannot_reach(
    tor_network: TorNetwork,
) -> None:
    closed = free_loopback_port()

    report = check_proxy(
        tor_network.proxy_url(),
        target_url=f"http://127.0.0.1:{closed}/",
        timeout_s=TARGET_TIMEOUT_S,
    )

    assert report.target_status is None
    assert report.target_error is not None
    assert report.ok is False


@pytest.mark.slow
def test_two_sends_of_one_sender_use_different_circuits(
    tor_network: TorNetwork,
    gateway_stack: GatewayStack,
    stream_log: StreamLog,
) -> None:
    sender = Sender(
        parse_proxy_url(tor_network.proxy_url()), allow_insecure_http=True
    )
    mark = stream_log.mark()

    with sender:
        for n in (1, 2):
            envelope = seal(
                gateway_stack.key.key_config(),
                secrets.token_bytes(REPORT_ID_BYTES),
                json.dumps(a_cimp_report(f"one-sender-{n}")).encode(),
            )
            sender.post(gateway_stack.loopback_url, envelope, SEND_TIMEOUT_S)

    (user1, circuit1), (user2, circuit2) = stream_log.since(mark, 2)
    assert user1 != user2  # fresh random SOCKS credentials per send
    assert circuit1 != circuit2


@pytest.fixture
def secure_store_to(
    tor_network: TorNetwork,
    gateway_stack: GatewayStack,
    tmp_path: Path,
    memory_keyring: Any,  # tests/conftest.py
) -> Iterator[SecureStore]:
    store = SecureStore(
        name="tor-e2e",
        path=tmp_path / "store.sealed",
        proxy_url=tor_network.proxy_url(),
        gateway_key_config=gateway_stack.key.key_config().to_base64(),
        keyring_backend=memory_keyring,
        allow_insecure_http=True,  # the loopback gateway behind the exit
    )
    try:
        yield store
    finally:
        store.close()


def store_send(store: SecureStore, report: dict[str, Any], url: str) -> None:
    """SecureStore.send, waited for; raises what ``done`` got."""
    finished = threading.Event()
    outcome: list[Exception | None] = []

    def done(error: Exception | None) -> None:
        outcome.append(error)
        finished.set()

    store.send(json.dumps(report), url, SEND_TIMEOUT_S, done)
    assert finished.wait(SEND_TIMEOUT_S * 4)
    if outcome[0] is not None:
        raise outcome[0]


@pytest.mark.slow
def test_secure_store_reports_reach_the_receiver_via_onion_and_exit(
    gateway_stack: GatewayStack, secure_store_to: SecureStore
) -> None:
    before = len(gateway_stack.receiver.received)

    store_send(
        secure_store_to,
        a_cimp_report("store-via-onion"),
        gateway_stack.onion_url,
    )
    store_send(
        secure_store_to,
        a_cimp_report("store-via-exit"),
        gateway_stack.loopback_url,
    )

    received = gateway_stack.receiver.received[before:]
    assert [r["visits"][0]["action_name"] for r in received] == [
        "store-via-onion",
        "store-via-exit",
    ]


@pytest.mark.slow
def test_every_torrc_is_a_private_loopback_network(
    tor_network: TorNetwork,
) -> None:
    for node in tor_network.nodes:
        torrc = node.torrc.read_text()
        addresses = set(re.findall(r"\b\d+\.\d+\.\d+\.\d+\b", torrc))
        assert addresses == {"127.0.0.1"}, node.nick
        assert "TestingTorNetwork 1" in torrc.splitlines()
        assert "UseDefaultFallbackDirs 0" in torrc.splitlines()
        assert torrc.count("\nDirAuthority ") == 3


# Last in the file, so that it audits the sockets after all the traffic.
@pytest.mark.slow
def test_tor_processes_use_only_loopback_sockets(
    tor_network: TorNetwork, gateway_stack: GatewayStack
) -> None:
    bad, checked = tor_network.socket_audit()

    assert bad == []
    assert checked > 0
