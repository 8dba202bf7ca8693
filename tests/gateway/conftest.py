"""Fixtures for the gateway tests: a real upstream, keys, an app."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import Upstream, running_upstream

from secure_store.gateway import (
    GatewayApp,
    SQLiteReplayCache,
    create_app,
    make_server,
)
from secure_store.transport.envelope import GatewayKey, Suite


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A real HTTP server on 127.0.0.1 standing in for the CIMP."""
    with running_upstream() as recorder:
        yield recorder


@pytest.fixture(scope="session")
def x25519_key() -> GatewayKey:
    return GatewayKey.generate(Suite.X25519, key_id=11)


@pytest.fixture(scope="session")
def hybrid_key() -> GatewayKey:
    return GatewayKey.generate(Suite.PQ_HYBRID, key_id=22)


@pytest.fixture
def replay_cache(tmp_path: Path) -> Iterator[SQLiteReplayCache]:
    cache = SQLiteReplayCache(tmp_path / "replay.sqlite3")
    yield cache
    cache.close()


@pytest.fixture
def app(
    x25519_key: GatewayKey,
    hybrid_key: GatewayKey,
    upstream: Upstream,
    replay_cache: SQLiteReplayCache,
) -> GatewayApp:
    return create_app(
        [x25519_key, hybrid_key],
        upstream.url,
        replay_cache=replay_cache,
        upstream_timeout_s=1.0,
        retry_after_s=17,
    )


@pytest.fixture
def served(app: GatewayApp) -> Iterator[str]:
    """The app under a real waitress server in this process; its URL."""
    from waitress import wasyncore

    server: Any = make_server(app, "127.0.0.1", 0, threads=8)
    stop = threading.Event()

    def run() -> None:
        # waitress's own run() has no clean way to stop from outside.
        while not stop.is_set():
            wasyncore.loop(timeout=0.02, map=server._map, count=1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    stop.set()
    thread.join()
    server.task_dispatcher.shutdown(timeout=5)
    wasyncore.close_all(server._map)
