"""Replay caches let exactly one request forward a report id."""

from __future__ import annotations

import stat
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from secure_store.cleaninsights.clock import FrozenClock
from secure_store.demo.socks import free_port
from secure_store.errors import GatewayError, ReplayCacheError
from secure_store.gateway import (
    ClaimStatus,
    MemoryReplayCache,
    ReplayCache,
    SQLiteReplayCache,
    open_replay_cache,
)
from secure_store.gateway.replay import default_replay_cache_path

ID = b"\x01" * 16
LEASE_S = 10.0


@pytest.fixture(params=["memory", "sqlite"])
def make_cache(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., ReplayCache]]:
    made: list[ReplayCache] = []

    def make(**kwargs: float) -> ReplayCache:
        cache: ReplayCache
        if request.param == "memory":
            cache = MemoryReplayCache(**kwargs)
        else:
            cache = SQLiteReplayCache(tmp_path / "replay.sqlite3", **kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


def test_the_first_claim_of_an_id_gets_the_lease(
    make_cache: Callable[..., ReplayCache], clock: FrozenClock
) -> None:
    claim = make_cache().claim(ID, LEASE_S)

    assert claim.status is ClaimStatus.CLAIMED
    assert len(claim.token) == 16


def test_a_second_claim_during_the_lease_is_in_flight(
    make_cache: Callable[..., ReplayCache], clock: FrozenClock
) -> None:
    cache = make_cache()
    cache.claim(ID, LEASE_S)

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.IN_FLIGHT


def test_a_claim_after_the_lease_ran_out_gets_the_lease(
    make_cache: Callable[..., ReplayCache], clock: FrozenClock
) -> None:
    cache = make_cache()
    cache.claim(ID, LEASE_S)
    clock.advance(timedelta(seconds=LEASE_S + 1))

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.CLAIMED


def test_a_forwarded_id_is_reported_forwarded(
    make_cache: Callable[..., ReplayCache], clock: FrozenClock
) -> None:
    cache = make_cache()
    cache.mark_forwarded(cache.claim(ID, LEASE_S))

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.FORWARDED


def test_a_forwarded_id_stays_forwarded_for_thirty_days_by_default(
    make_cache: Callable[..., ReplayCache], clock: FrozenClock
) -> None:
    cache = make_cache()
    cache.mark_forwarded(cache.claim(ID, LEASE_S))
    clock.advance(timedelta(days=30) - timedelta(seconds=1))

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.FORWARDED


def test_a_forwarded_id_may_be_forwarded_again_after_the_retention(
    make_cache: Callable[..., ReplayCache], clock: FrozenClock
) -> None:
    cache = make_cache(retention_s=3600)
    cache.mark_forwarded(cache.claim(ID, LEASE_S))
    clock.advance(timedelta(seconds=3601))

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.CLAIMED


def test_a_released_id_can_be_claimed_again(
    make_cache: Callable[..., ReplayCache], clock: FrozenClock
) -> None:
    cache = make_cache()
    cache.release(cache.claim(ID, LEASE_S))

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.CLAIMED


def test_a_stale_lease_cannot_release_the_lease_that_replaced_it(
    make_cache: Callable[..., ReplayCache], clock: FrozenClock
) -> None:
    cache = make_cache()
    stale = cache.claim(ID, LEASE_S)
    clock.advance(timedelta(seconds=LEASE_S + 1))
    cache.claim(ID, LEASE_S)

    cache.release(stale)

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.IN_FLIGHT


def test_releasing_does_not_undo_forwarded(
    make_cache: Callable[..., ReplayCache], clock: FrozenClock
) -> None:
    cache = make_cache()
    claim = cache.claim(ID, LEASE_S)
    cache.mark_forwarded(claim)

    cache.release(claim)

    assert cache.claim(ID, LEASE_S).status is ClaimStatus.FORWARDED


def test_ids_are_independent(
    make_cache: Callable[..., ReplayCache], clock: FrozenClock
) -> None:
    cache = make_cache()
    cache.mark_forwarded(cache.claim(ID, LEASE_S))

    assert cache.claim(b"\x02" * 16, LEASE_S).status is ClaimStatus.CLAIMED


def test_a_retention_that_is_not_positive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReplayCacheError, match="retention must be positive"):
        SQLiteReplayCache(tmp_path / "r.sqlite3", retention_s=0)


# -- SQLite specifics -----------------------------------------------------


def test_sixteen_connections_to_one_file_grant_one_lease(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.sqlite3"
    caches = [SQLiteReplayCache(path) for _ in range(16)]
    barrier = threading.Barrier(len(caches))
    statuses: list[ClaimStatus] = []

    def claim(cache: SQLiteReplayCache) -> None:
        barrier.wait()
        statuses.append(cache.claim(ID, LEASE_S).status)

    threads = [threading.Thread(target=claim, args=(c,)) for c in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for cache in caches:
        cache.close()

    assert (
        sorted(s.value for s in statuses) == ["claimed"] + ["in-flight"] * 15
    )


def test_a_forwarded_id_survives_reopening_the_file(
    tmp_path: Path, clock: FrozenClock
) -> None:
    path = tmp_path / "replay.sqlite3"
    first = SQLiteReplayCache(path)
    first.mark_forwarded(first.claim(ID, LEASE_S))
    first.close()

    reopened = SQLiteReplayCache(path)

    assert reopened.claim(ID, LEASE_S).status is ClaimStatus.FORWARDED
    reopened.close()


def test_the_sqlite_file_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "replay.sqlite3"

    SQLiteReplayCache(path).close()

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_unopenable_sqlite_path_raises_replay_cache_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("")

    with pytest.raises(ReplayCacheError, match="cannot open the replay"):
        SQLiteReplayCache(tmp_path / "a-file" / "replay.sqlite3")


def test_a_file_that_is_not_sqlite_raises_replay_cache_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "replay.sqlite3"
    path.write_bytes(b"not a database, " * 100)

    with pytest.raises(ReplayCacheError):
        SQLiteReplayCache(path)


# -- open_replay_cache ----------------------------------------------------


def test_open_replay_cache_with_a_path_opens_sqlite(tmp_path: Path) -> None:
    cache = open_replay_cache(str(tmp_path / "r.sqlite3"))

    assert isinstance(cache, SQLiteReplayCache)
    assert cache.path == tmp_path / "r.sqlite3"
    cache.close()


def test_open_replay_cache_with_nothing_opens_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    cache = open_replay_cache(None)

    assert isinstance(cache, SQLiteReplayCache)
    assert cache.path == default_replay_cache_path()
    assert cache.path == (
        tmp_path / "state" / "secure-store" / "gateway-replay.sqlite3"
    )
    cache.close()


def test_open_replay_cache_with_memory_opens_an_in_process_cache() -> None:
    assert isinstance(open_replay_cache("memory:"), MemoryReplayCache)


def test_an_unreachable_redis_fails_when_opened_naming_where() -> None:
    port = free_port()

    with pytest.raises(GatewayError) as raised:
        open_replay_cache(f"redis://127.0.0.1:{port}/0")

    assert str(raised.value).startswith(
        f"cannot use the Redis replay cache at redis://127.0.0.1:{port}/0: "
    )


def test_the_redis_password_is_not_in_the_start_up_error() -> None:
    port = free_port()

    with pytest.raises(GatewayError) as raised:
        open_replay_cache(f"redis://gw:hunter2@127.0.0.1:{port}/0")

    assert "hunter2" not in str(raised.value)
    assert f"redis://***@127.0.0.1:{port}/0" in str(raised.value)


def test_a_redis_url_without_the_redis_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes "import redis" raise ImportError.
    monkeypatch.setitem(sys.modules, "redis", None)

    with pytest.raises(GatewayError) as raised:
        open_replay_cache("redis://127.0.0.1:6379/0")

    assert str(raised.value) == (
        "a Redis replay cache needs the redis package: "
        "pip install 'secure-store[redis]'"
    )
