"""The Redis replay cache, against a real redis-server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import pytest
import redis
import requests

from secure_store.cleaninsights.clock import FrozenClock
from secure_store.demo.socks import free_port
from secure_store.errors import GatewayError
from secure_store.gateway import (
    ClaimStatus,
    RedisReplayCache,
    open_replay_cache,
)
from secure_store.transport.envelope import GatewayKey, Suite

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed (Debian package redis-server)",
)

GATEWAY_TESTS = Path(__file__).resolve().parents[1] / "gateway"
ID = b"\x07" * 16
LEASE_S = 10.0
START_TIMEOUT_S = 10.0


def _load(name: str) -> ModuleType:
    # The gateway tests' helpers live beside them, outside any package.
    spec = importlib.util.spec_from_file_location(
        f"redis_test_{name}", GATEWAY_TESTS / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


helpers = _load("gateway_helpers")
gateway_process = _load("gateway_process")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free loopback port, without persistence."""
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    client.close()
    yield url
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def cache(redis_url: str) -> Iterator[RedisReplayCache]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    replay_cache = RedisReplayCache(redis_url)
    yield replay_cache
    replay_cache.close()


def test_the_first_claim_gets_the_lease(
    cache: RedisReplayCache, clock: FrozenClock
) -> None:
    assert cache.claim(ID, LEASE_S).status is ClaimStatus.CLAIMED


def test_a_second_claim_during_the_lease_is_in_flight(
    cache: RedisReplayCache, clock: FrozenClock
) -> None:
    cache.claim(ID, LEASE_S)

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.IN_FLIGHT


def test_a_claim_after_the_lease_ran_out_gets_the_lease(
    cache: RedisReplayCache, clock: FrozenClock
) -> None:
    cache.claim(ID, LEASE_S)
    clock.advance(timedelta(seconds=LEASE_S + 1))

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.CLAIMED


def test_a_forwarded_id_is_forwarded_until_the_retention_ends(
    redis_url: str, cache: RedisReplayCache, clock: FrozenClock
) -> None:
    cache.mark_forwarded(cache.claim(ID, LEASE_S))
    clock.advance(timedelta(days=30) - timedelta(seconds=1))
    before_end = cache.claim(ID, LEASE_S).status
    clock.advance(timedelta(seconds=2))
    after_end = cache.claim(ID, LEASE_S).status

    assert (before_end, after_end) == (
        ClaimStatus.FORWARDED,
        ClaimStatus.CLAIMED,
    )


def test_a_released_id_can_be_claimed_again(
    cache: RedisReplayCache, clock: FrozenClock
) -> None:
    cache.release(cache.claim(ID, LEASE_S))

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.CLAIMED


def test_a_stale_lease_cannot_release_the_lease_that_replaced_it(
    cache: RedisReplayCache, clock: FrozenClock
) -> None:
    stale = cache.claim(ID, LEASE_S)
    clock.advance(timedelta(seconds=LEASE_S + 1))
    cache.claim(ID, LEASE_S)

    cache.release(stale)

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.IN_FLIGHT


def test_releasing_does_not_undo_forwarded(
    cache: RedisReplayCache, clock: FrozenClock
) -> None:
    claim = cache.claim(ID, LEASE_S)
    cache.mark_forwarded(claim)

    cache.release(claim)

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.FORWARDED


def test_the_redis_key_expires_with_the_retention(
    redis_url: str, cache: RedisReplayCache
) -> None:
    cache.mark_forwarded(cache.claim(ID, LEASE_S))

    client = redis.Redis.from_url(redis_url)
    ttl_s = client.ttl("secure-store:replay:" + ID.hex())
    client.close()

    assert 30 * 86_400 - 60 <= ttl_s <= 30 * 86_400


def test_sixteen_clients_claiming_at_once_get_one_lease(
    redis_url: str, cache: RedisReplayCache
) -> None:
    caches = [RedisReplayCache(redis_url) for _ in range(16)]
    barrier = threading.Barrier(len(caches))
    statuses: list[str] = []

    def claim(each: RedisReplayCache) -> None:
        barrier.wait()
        statuses.append(each.claim(ID, LEASE_S).status.value)

    threads = [threading.Thread(target=claim, args=(c,)) for c in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for each in caches:
        each.close()

    assert sorted(statuses) == ["claimed"] + ["in-flight"] * 15


# -- start-up checks -------------------------------------------------------


def test_open_replay_cache_with_a_redis_url_opens_redis(
    redis_url: str,
) -> None:
    cache = open_replay_cache(redis_url)

    assert isinstance(cache, RedisReplayCache)
    cache.close()


def test_a_redis_url_naming_a_missing_database_fails_when_opened(
    redis_url: str,
) -> None:
    # redis-server has 16 databases; the PING at start-up selects 99.
    wrong = redis_url.rsplit("/", 1)[0] + "/99"

    with pytest.raises(GatewayError) as raised:
        open_replay_cache(wrong)

    assert str(raised.value).startswith(
        f"cannot use the Redis replay cache at {wrong}: "
    )
    assert "DB index is out of range" in str(raised.value)


# -- two gateway processes sharing Redis ----------------------------------


@pytest.fixture
def two_gateways(
    redis_url: str, cache: RedisReplayCache, tmp_path: Path
) -> Iterator[tuple[list[str], GatewayKey, object]]:
    key = GatewayKey.generate(Suite.X25519, key_id=41)
    key_file = tmp_path / "gateway.json"
    key.save(key_file)
    with (
        helpers.running_upstream() as upstream,
        gateway_process.GatewayProcess(
            [key_file], upstream.url, redis_url
        ) as first,
        gateway_process.GatewayProcess(
            [key_file], upstream.url, redis_url
        ) as second,
    ):
        yield [first.url, second.url], key, upstream


def post(url: str, envelope: bytes) -> int:
    with requests.Session() as session:
        session.trust_env = False
        return session.post(url + "/", data=envelope, timeout=20).status_code


def test_two_processes_sharing_redis_forward_five_posts_once(
    two_gateways: tuple[list[str], GatewayKey, object],
) -> None:
    urls, key, upstream = two_gateways

    statuses = [post(urls[i % 2], helpers.seal_report(key)) for i in range(5)]

    assert statuses == [204] * 5
    assert upstream.bodies == [helpers.CIMP_BODY]  # type: ignore[attr-defined]


def test_two_processes_sharing_redis_forward_eight_concurrent_posts_once(
    two_gateways: tuple[list[str], GatewayKey, object],
) -> None:
    urls, key, upstream = two_gateways
    upstream.delay_s = 0.3  # type: ignore[attr-defined]
    envelopes = [helpers.seal_report(key) for _ in range(8)]
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def send(index: int) -> None:
        barrier.wait()
        statuses.append(post(urls[index % 2], envelopes[index]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [204] * 8
    assert upstream.bodies == [helpers.CIMP_BODY]  # type: ignore[attr-defined]
