"""SecureStore's background writer: latest wins, every done called once."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from support import MemoryKeyring

from secure_store import CleanInsights, SecureStore
from secure_store.cleaninsights.clock import FrozenClock

CONF: dict[str, Any] = {
    "server": "https://gateway.example.onion/",
    "siteId": 1,
    "campaigns": {
        "c": {
            "start": "2024-01-01T00:00:00Z",
            "end": "2024-12-31T23:59:59Z",
            "aggregationPeriodLength": 7,
        }
    },
}


class SlowCountingWrites:
    """Wraps a SealedFile's write: counts calls, makes each one slow."""

    def __init__(self, store: SecureStore, delay_s: float) -> None:
        self.count = 0
        self.delay_s = delay_s
        self._write = store._file.write
        store._file.write = self  # type: ignore[method-assign]

    def __call__(self, plaintext: bytes, keyset: Any) -> None:
        self.count += 1
        time.sleep(self.delay_s)
        self._write(plaintext, keyset)


def open_store(tmp_path: Path, keyring: MemoryKeyring) -> SecureStore:
    return SecureStore(path=tmp_path / "s.sstore", keyring_backend=keyring)


def test_back_to_back_async_persists_coalesce_and_all_dones_run(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = open_store(tmp_path, memory_keyring)
    writes = SlowCountingWrites(store, delay_s=0.05)
    calls: list[Exception | None] = []
    lock = threading.Lock()

    def done(error: Exception | None) -> None:
        with lock:
            calls.append(error)

    for _ in range(1000):
        store.persist(True, done)
    store.close()

    assert calls == [None] * 1000
    assert writes.count <= 5


def test_latest_snapshot_wins(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = open_store(tmp_path, memory_keyring)
    SlowCountingWrites(store, delay_s=0.05)
    ci = CleanInsights(CONF, store)
    ci.grant_campaign("c")
    for _ in range(20):
        ci.measure_visit(["Main"], "c")
        store.persist(True, lambda error: None)
    store.close()

    reopened = open_store(tmp_path, memory_keyring)

    assert [v.times for v in reopened.visits] == [20]
    reopened.close()


def test_synchronous_persist_is_on_disk_when_it_returns(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = open_store(tmp_path, memory_keyring)
    ci = CleanInsights(CONF, store)
    ci.grant_campaign("c")
    ci.measure_visit(["Main"], "c")
    calls: list[Exception | None] = []

    store.persist(False, calls.append)

    assert calls == [None]
    other = open_store(tmp_path, memory_keyring)
    assert [v.times for v in other.visits] == [1]
    other.close()
    store.close()


def test_close_flushes_a_queued_persist(
    tmp_path: Path, memory_keyring: MemoryKeyring, clock: FrozenClock
) -> None:
    store = open_store(tmp_path, memory_keyring)
    SlowCountingWrites(store, delay_s=0.2)
    ci = CleanInsights(CONF, store)
    ci.grant_campaign("c")
    store.persist(True, lambda error: None)  # occupies the writer
    ci.measure_visit(["Main"], "c")
    store.persist(True, lambda error: None)  # queued behind it

    store.close()

    reopened = open_store(tmp_path, memory_keyring)
    assert [v.times for v in reopened.visits] == [1]
    reopened.close()
