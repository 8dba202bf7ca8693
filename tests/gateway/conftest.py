"""Fixtures for the gateway tests: a real upstream, keys, an app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_helpers import Upstream, running_upstream, serving

from secure_store.gateway import (
    GatewayApp,
    SQLiteReplayCache,
    create_app,
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
    with serving(app) as url:
        yield url
