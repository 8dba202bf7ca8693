"""The main job end to end: CleanInsights + SecureStore -> SOCKS5 proxy ->
gateway -> CIMP, every hop a real server on 127.0.0.1."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import MemoryKeyring, wait_for

from secure_store import CleanInsights, SecureStore
from secure_store.cleaninsights.clock import FrozenClock
from secure_store.demo.receiver import CimpReceiver
from secure_store.demo.runner import WaitressThread
from secure_store.demo.socks import LOOPBACK, Pproxy, free_port
from secure_store.errors import SendError
from secure_store.gateway import create_app
from secure_store.gateway.replay import SQLiteReplayCache
from secure_store.transport.envelope import GatewayKey, Suite

CAMPAIGN = "weekly-screens"
START = datetime(2024, 1, 1, tzinfo=UTC)
PERIOD_END = datetime(2024, 1, 22, tzinfo=UTC)
SEND_TIMEOUT_S = 3


def socket_owner(local_port: int, peer_port: int) -> int:
    """Return the pid of the process owning the TCP socket
    127.0.0.1:local_port -> 127.0.0.1:peer_port (-1 if none).

    ``ss`` asks the kernel over netlink; /proc/net/tcp is built page by
    page and can skip a line while other sockets come and go.
    """
    listing = subprocess.run(
        ["ss", "-Htnp", f"sport = :{local_port} and dport = :{peer_port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"pid=(\d+)", listing)
    return int(found.group(1)) if found else -1


class Gateway(WaitressThread):
    """The gateway app under waitress, noting who connects to it."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.requests: list[dict[str, Any]] = []

        def recording_app(environ: dict[str, Any], start: Any) -> Any:
            peer = int(environ["REMOTE_PORT"])
            self.requests.append(
                {
                    "peer_pid": socket_owner(peer, self.port),
                    "bytes": int(environ.get("CONTENT_LENGTH") or 0),
                }
            )
            return app(environ, start)

        super().__init__(recording_app)

    @property
    def url(self) -> str:
        # A name, not an address: only the proxy may resolve it.
        return f"http://localhost:{self.port}/"


@pytest.fixture
def gateway_key() -> GatewayKey:
    return GatewayKey.generate(Suite.PQ_HYBRID)


@pytest.fixture
def gateway(
    tmp_path: Path,
    gateway_key: GatewayKey,
    cimp: CimpReceiver,
    socks_proxy: Pproxy,
) -> Iterator[Gateway]:
    cache = SQLiteReplayCache(tmp_path / "replay.sqlite3")
    app = create_app([gateway_key], cimp.url, replay_cache=cache)
    with Gateway(app) as gw:
        yield gw


def conf(server: str) -> dict[str, Any]:
    return {
        "server": server,
        "siteId": 7,
        "timeout": SEND_TIMEOUT_S,
        "campaigns": {
            CAMPAIGN: {
                "start": "2024-01-01T00:00:00Z",
                "end": "2024-12-31T23:59:59Z",
                "aggregationPeriodLength": 7,
                "numberOfPeriods": 4,
            }
        },
    }


def open_store(
    tmp_path: Path,
    keyring: MemoryKeyring,
    proxy_url: str,
    gateway_key: GatewayKey,
) -> SecureStore:
    return SecureStore(
        name="app",
        path=tmp_path / "app.sstore",
        proxy_url=proxy_url,
        gateway_key_config=gateway_key.key_config().to_base64(),
        keyring_backend=keyring,
        allow_insecure_http=True,
    )


def measure_one_week(ci: CleanInsights) -> None:
    ci.grant_campaign(CAMPAIGN)
    for _ in range(3):
        ci.measure_visit(["Main", "Settings"], CAMPAIGN)
    ci.measure_event("music", "play", CAMPAIGN, "track", 12.5)
    ci.measure_event("music", "play", CAMPAIGN, "track", 7.5)


EXPECTED_REPORT = {
    "idsite": 7,
    "visits": [
        {
            "action_name": "Main/Settings",
            "period_start": 1705276800,
            "period_end": 1705881600,
            "times": 3,
        }
    ],
    "events": [
        {
            "category": "music",
            "action": "play",
            "name": "track",
            "value": 20.0,
            "period_start": 1705276800,
            "period_end": 1705881600,
            "times": 2,
        }
    ],
}


def send_and_wait(
    ci: CleanInsights, store: SecureStore
) -> list[Exception | None]:
    """Send what finished periods hold; return what ``done`` was given."""
    results: list[Exception | None] = []
    real_send = store.send

    def spying_send(data: str, server: str, timeout: float, done: Any) -> None:
        def spying_done(error: Exception | None) -> None:
            results.append(error)
            done(error)

        real_send(data, server, timeout, spying_done)

    store.send = spying_send  # type: ignore[method-assign]
    ci.persist_and_send()
    wait_for(lambda: results, SEND_TIMEOUT_S * 5)
    return results


def send_now(
    ci: CleanInsights, store: SecureStore, clock: FrozenClock
) -> list[Exception | None]:
    """Move past the measured week, then send and wait."""
    clock.set(PERIOD_END + timedelta(hours=1))
    return send_and_wait(ci, store)


def test_report_travels_through_proxy_and_gateway_to_the_cimp(
    tmp_path: Path,
    memory_keyring: MemoryKeyring,
    clock: FrozenClock,
    socks_proxy: Pproxy,
    gateway: Gateway,
    gateway_key: GatewayKey,
    cimp: CimpReceiver,
) -> None:
    store = open_store(tmp_path, memory_keyring, socks_proxy.url, gateway_key)
    ci = CleanInsights(conf(gateway.url), store)
    measure_one_week(ci)

    results = send_now(ci, store, clock)

    assert results == [None]
    assert cimp.received == [EXPECTED_REPORT]
    assert wait_for(lambda: not store.visits and not store.events)
    store.close()


def test_gateway_sees_only_the_proxy_and_cimp_only_the_gateway(
    tmp_path: Path,
    memory_keyring: MemoryKeyring,
    clock: FrozenClock,
    socks_proxy: Pproxy,
    gateway: Gateway,
    gateway_key: GatewayKey,
    cimp: CimpReceiver,
) -> None:
    store = open_store(tmp_path, memory_keyring, socks_proxy.url, gateway_key)
    ci = CleanInsights(conf(gateway.url), store)
    measure_one_week(ci)

    send_now(ci, store, clock)

    assert [r["peer_pid"] for r in gateway.requests] == [socks_proxy.pid]
    assert f"-> localhost:{gateway.port}" in "\n".join(socks_proxy.log_lines())
    # The CIMP got plain JSON, which only the gateway can produce.
    assert cimp.received == [EXPECTED_REPORT]
    assert gateway.requests[0]["bytes"] > len(str(EXPECTED_REPORT))
    store.close()


def test_proxy_down_fails_within_timeout_and_keeps_the_data(
    tmp_path: Path,
    memory_keyring: MemoryKeyring,
    clock: FrozenClock,
    gateway_key: GatewayKey,
    cimp: CimpReceiver,
) -> None:
    nothing_listens = f"socks5h://{LOOPBACK}:{free_port()}"
    store = open_store(tmp_path, memory_keyring, nothing_listens, gateway_key)
    ci = CleanInsights(conf(f"http://localhost:{free_port()}/"), store)
    measure_one_week(ci)

    started = time.monotonic()
    results = send_now(ci, store, clock)
    elapsed = time.monotonic() - started

    assert len(results) == 1
    assert isinstance(results[0], SendError)
    assert elapsed < SEND_TIMEOUT_S + 1.0
    assert [v.times for v in store.visits] == [3]
    assert [e.times for e in store.events] == [2]
    store.close()
    reopened = open_store(
        tmp_path, memory_keyring, nothing_listens, gateway_key
    )
    assert [v.times for v in reopened.visits] == [3]
    reopened.close()


def test_environment_proxy_variables_are_ignored(
    tmp_path: Path,
    memory_keyring: MemoryKeyring,
    clock: FrozenClock,
    socks_proxy: Pproxy,
    gateway: Gateway,
    gateway_key: GatewayKey,
    cimp: CimpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A decoy proxy that must see nothing, named by every variable.
    with Pproxy(with_credentials=False) as decoy:
        for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(variable, decoy.url)
            monkeypatch.setenv(variable.lower(), decoy.url)
        monkeypatch.setenv("NO_PROXY", "*")
        monkeypatch.setenv("no_proxy", "*")
        store = open_store(
            tmp_path, memory_keyring, socks_proxy.url, gateway_key
        )
        ci = CleanInsights(conf(gateway.url), store)
        measure_one_week(ci)

        results = send_now(ci, store, clock)

        assert results == [None]
        assert [r["peer_pid"] for r in gateway.requests] == [socks_proxy.pid]
        assert not [line for line in decoy.log_lines() if "->" in line]
        store.close()


def test_demo_command_exits_zero() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "secure_store.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "OK: the CIMP received exactly" in completed.stdout
