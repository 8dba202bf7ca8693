"""A report keeps its id until acknowledged, so a lost answer never makes the
CIMP count twice: not on retry, not after a restart."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from support import MemoryKeyring, wait_for
from test_end_to_end import (
    EXPECTED_REPORT,
    PERIOD_END,
    Gateway,
    conf,
    measure_one_week,
    open_store,
    send_and_wait,
)

from secure_store import CleanInsights
from secure_store.cleaninsights.clock import FrozenClock
from secure_store.demo.receiver import CimpReceiver
from secure_store.demo.socks import Pproxy
from secure_store.gateway import create_app
from secure_store.gateway.replay import SQLiteReplayCache
from secure_store.transport.envelope import GatewayKey, Suite


class LosesAnswers:
    """WSGI middleware: while ``losing`` is set, the gateway does its work
    but its answer is replaced by a 503, as if lost on the way back."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.losing = True

    def __call__(self, environ: dict[str, Any], start: Any) -> Any:
        if not self.losing:
            return self.app(environ, start)
        b"".join(self.app(environ, lambda *args: None))
        start("503 Service Unavailable", [("Content-Length", "0")])
        return [b""]


@pytest.fixture
def forgetful_gateway(
    tmp_path: Path, cimp: CimpReceiver, socks_proxy: Pproxy
) -> Iterator[tuple[Gateway, GatewayKey, LosesAnswers]]:
    key = GatewayKey.generate(Suite.X25519)
    app = create_app(
        [key], cimp.url, replay_cache=SQLiteReplayCache(tmp_path / "r.db")
    )
    lossy = LosesAnswers(app)
    with Gateway(lossy) as gw:
        yield gw, key, lossy


def test_retry_after_lost_answer_and_restart_is_counted_once(
    tmp_path: Path,
    memory_keyring: MemoryKeyring,
    clock: FrozenClock,
    socks_proxy: Pproxy,
    forgetful_gateway: tuple[Gateway, GatewayKey, LosesAnswers],
    cimp: CimpReceiver,
) -> None:
    gateway, key, lossy = forgetful_gateway
    store = open_store(tmp_path, memory_keyring, socks_proxy.url, key)
    ci = CleanInsights(conf(gateway.url), store)
    measure_one_week(ci)
    clock.set(PERIOD_END + timedelta(hours=1))

    first = send_and_wait(ci, store)
    store.close()  # the app quits before retrying
    assert first and first[0] is not None
    assert cimp.received == [EXPECTED_REPORT]

    lossy.losing = False
    clock.advance(timedelta(hours=2))  # past the core's retry backoff
    restarted = open_store(tmp_path, memory_keyring, socks_proxy.url, key)
    ci = CleanInsights(conf(gateway.url), restarted)
    second = send_and_wait(ci, restarted)

    assert second == [None]
    assert len(gateway.requests) >= 2
    assert cimp.received == [EXPECTED_REPORT]
    assert wait_for(lambda: not restarted.visits)
    restarted.close()
