"""Timings of the core with 100,000 data points (run by hand, not pytest).

    .venv/bin/python tests/cleaninsights/perf_core.py [folder]

Prints CPU milliseconds (best of five) for measuring, writing and
reading the store JSON, and the wall time of a durable FileStore persist
into ``folder`` (a temporary folder by default).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from secure_store.cleaninsights import CleanInsights, FileStore, MemoryStore
from secure_store.cleaninsights.clock import FrozenClock, use_clock

POINTS = 100_000
REPEATS = 5
START = datetime(2024, 1, 17, 10, tzinfo=UTC)
CONF = {
    "server": "http://127.0.0.1:9/ci",
    "siteId": 1,
    "persistEveryNTimes": 10**9,
    "campaigns": {
        "c": {
            "start": "2024-01-01T00:00:00Z",
            "end": "2024-12-31T00:00:00Z",
            "aggregationPeriodLength": 7,
        }
    },
}


def best_ms(action: Callable[[], object], clock: Callable[[], float]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = clock()
        action()
        best = min(best, clock() - started)
    return best * 1000


def main(folder: Path) -> None:
    with use_clock(FrozenClock(START)):
        store = MemoryStore()
        ci = CleanInsights(CONF, store, languages=[])
        ci.grant_campaign("c")
        started = time.process_time()
        for i in range(POINTS // 2):
            ci.measure_visit(["Main", f"scene{i}"], "c")
            ci.measure_event("cat", "act", "c", f"name{i}", i)
        per_new_us = (time.process_time() - started) / POINTS * 1e6
        started = time.process_time()
        for i in range(POINTS // 2):
            ci.measure_visit(["Main", f"scene{i}"], "c")
        per_merge_us = (time.process_time() - started) / (POINTS / 2) * 1e6

        text = store.to_json()
        data = json.loads(text)
        print(f"points: {len(store.visits) + len(store.events):,}")
        print(f"store JSON: {len(text.encode('utf-8')):,} bytes")
        print(f"measure, new point: {per_new_us:.1f} us")
        print(f"measure, merging: {per_merge_us:.1f} us")
        cpu = time.process_time
        print(f"to_dict: {best_ms(store.to_dict, cpu):.0f} ms CPU")
        print(f"to_json: {best_ms(store.to_json, cpu):.0f} ms CPU")
        print(
            f"json.loads: {best_ms(lambda: json.loads(text), cpu):.0f} ms CPU"
        )
        print(
            "load from parsed JSON: "
            f"{best_ms(lambda: MemoryStore(data=data), cpu):.0f} ms CPU"
        )

        file_store = FileStore(folder / "perf-store.json")
        file_store.consents = store.consents
        file_store.visits = store.visits
        file_store.events = store.events

        def persist() -> None:
            file_store.persist(False, lambda error: None)

        print(
            "FileStore.persist(sync, fsync): "
            f"{best_ms(persist, time.perf_counter):.0f} ms wall"
        )
        loaded = best_ms(
            lambda: FileStore(folder / "perf-store.json"), time.perf_counter
        )
        print(f"FileStore load: {loaded:.0f} ms wall")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as temporary:
            main(Path(temporary))
