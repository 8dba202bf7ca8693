"""Thread safety: concurrent measurements and callbacks lose nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from ci_helpers import MakeCi, utc

from secure_store.cleaninsights import Feature, MemoryStore
from secure_store.cleaninsights.clock import FrozenClock

THREADS = 8
PER_THREAD = 5_000
Done = Callable[[Exception | None], None]


class WorkerStore(MemoryStore):
    """Calls every done from its own thread, as real stores may."""

    def persist(self, asynchronous: bool, done: Done) -> None:
        self.persist_count += 1
        threading.Thread(target=done, args=(None,)).start()


def run_threads(target: Callable[[int], None]) -> None:
    start = threading.Barrier(THREADS)

    def body(index: int) -> None:
        start.wait()
        target(index)

    threads = [
        threading.Thread(target=body, args=(i,)) for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)


def test_8_threads_x_5000_measurements_give_exact_totals(
    make_ci: MakeCi,
) -> None:
    ci, store = make_ci(
        campaigns={
            "c": {
                "start": "2024-01-01T00:00:00Z",
                "end": "2024-12-31T00:00:00Z",
                "aggregationPeriodLength": 7,
            }
        },
        store=WorkerStore(),
    )
    ci.grant_campaign("c")

    def measure(index: int) -> None:
        for i in range(PER_THREAD):
            if i % 2:
                ci.measure_visit(["Main", f"scene{i % 4}"], "c")
            else:
                ci.measure_event("cat", "act", "c", f"n{index % 2}", 1)

    run_threads(measure)

    visits = {v.action_name: v.times for v in store.visits}
    events = {e.name: (e.times, e.value) for e in store.events}
    # Half of all 40,000 calls are visits, split over two scenes.
    assert visits == {"Main/scene1": 10_000, "Main/scene3": 10_000}
    assert events == {"n0": (10_000, 10_000), "n1": (10_000, 10_000)}


class SlowSender(WorkerStore):
    """Reports each send a moment later from a timer thread."""

    def send(self, data: str, server: str, timeout: float, done: Done) -> None:
        self.sent.append(data)
        threading.Timer(0.001, done, (None,)).start()


def test_sends_and_measurements_interleave_without_loss(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, store = make_ci(
        campaigns={
            "c": {
                "start": "2024-01-01T00:00:00Z",
                "end": "2024-12-31T00:00:00Z",
                "aggregationPeriodLength": 1,
                "numberOfPeriods": 300,
            }
        },
        store=SlowSender(),
    )
    ci.grant_campaign("c")
    days = 20

    def measure(index: int) -> None:
        for _ in range(days):
            for _ in range(50):
                ci.measure_visit(["Main"], "c")
            if index == 0:
                clock.advance(timedelta(days=1))

    run_threads(measure)
    clock.set(utc(2024, 2, 10))  # all periods over, none purged yet
    deadline = time.monotonic() + 10
    while (store.visits or ci.sending) and time.monotonic() < deadline:
        ci.persist_and_send()
        time.sleep(0.005)

    sent_times = sum(
        v["times"] for body in store.sent for v in json.loads(body)["visits"]
    )
    assert store.visits == []
    assert sent_times == THREADS * days * 50


def test_consent_changes_from_many_threads(make_ci: MakeCi) -> None:
    ci, _ = make_ci(store=WorkerStore())

    def flip(index: int) -> None:
        for i in range(500):
            if (i + index) % 2:
                ci.grant_feature(Feature.lang)
            else:
                ci.deny_feature(Feature.ua)

    run_threads(flip)
    assert ci.feature_consents in (["lang", "ua"], ["ua", "lang"])
