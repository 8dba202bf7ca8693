"""Persisting and sending: counter, single flight, backoff, failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from ci_helpers import SERVER, MakeCi, utc

from secure_store.cleaninsights import (
    CleanInsights,
    Feature,
    MemoryStore,
    Store,
)
from secure_store.cleaninsights.clock import FrozenClock
from secure_store.errors import SendError

GRANTED = "weekly-screens"
PERIOD = (utc(2024, 1, 15), utc(2024, 1, 22))
AFTER = utc(2024, 1, 22, 0, 0, 1)
Done = Callable[[Exception | None], None]


def finished_visit() -> dict[str, Any]:
    return {
        "visits": [
            {
                "campaignId": GRANTED,
                "times": 2,
                "first": "2024-01-15T00:00:00.000Z",
                "last": "2024-01-22T00:00:00.000Z",
                "scenePath": ["Main"],
            }
        ]
    }


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


class HeldStore(Store):
    """Keeps every ``done`` it is given; the test decides when to call."""

    def __init__(self, **kwargs: Any) -> None:
        self.persist_dones: list[tuple[bool, Done]] = []
        self.send_dones: list[Done] = []
        self.bodies: list[str] = []
        super().__init__(**kwargs)

    def load(self, **kwargs: Any) -> dict[str, Any] | None:
        data: dict[str, Any] | None = kwargs.get("data")
        return data

    def persist(self, asynchronous: bool, done: Done) -> None:
        self.persist_dones.append((asynchronous, done))

    def send(self, data: str, server: str, timeout: float, done: Done) -> None:
        self.bodies.append(data)
        self.send_dones.append(done)


# -- the persist counter (6.2) ---------------------------------------------


def test_persist_waits_for_n_calls(make_ci: MakeCi) -> None:
    ci, store = make_ci(persistEveryNTimes=3)
    ci.grant_campaign(GRANTED)
    ci.measure_visit(["Main"], GRANTED)
    assert store.persist_count == 0
    ci.measure_visit(["Main"], GRANTED)
    assert store.persist_count == 1
    assert ci.persist_counter == 0


def test_discarded_measurements_count_too(make_ci: MakeCi) -> None:
    ci, store = make_ci(persistEveryNTimes=3)
    for _ in range(3):
        ci.measure_visit(["Main"], "unknown-campaign")
    assert store.persist_count == 1


def test_failed_persist_keeps_the_counter_and_retries(
    clock: FrozenClock,
) -> None:
    store = HeldStore()
    ci = CleanInsights(
        {
            "server": SERVER,
            "siteId": 1,
            "persistEveryNTimes": 2,
            "campaigns": {
                GRANTED: {
                    "start": "2024-01-01T00:00:00Z",
                    "end": "2024-12-31T00:00:00Z",
                    "aggregationPeriodLength": 7,
                }
            },
        },
        store,
    )
    ci.grant_feature(Feature.lang)
    ci.grant_feature(Feature.ua)
    store.persist_dones[0][1](OSError("disk full"))
    assert ci.persist_counter == 2
    ci.deny_feature(Feature.lang)
    assert len(store.persist_dones) == 2
    store.persist_dones[1][1](None)
    assert ci.persist_counter == 0


def test_forced_persist_is_synchronous() -> None:
    store = HeldStore()
    ci = CleanInsights(
        {
            "server": SERVER,
            "siteId": 1,
            "campaigns": {
                GRANTED: {
                    "start": "2024-01-01T00:00:00Z",
                    "end": "2099-12-31T00:00:00Z",
                    "aggregationPeriodLength": 7,
                }
            },
        },
        store,
    )
    ci.persist()
    assert [asynchronous for asynchronous, _ in store.persist_dones] == [False]


def test_store_persist_runs_while_the_sdk_lock_is_held(
    make_ci: MakeCi,
) -> None:
    held: list[bool] = []

    class Probe(MemoryStore):
        def persist(self, asynchronous: bool, done: Done) -> None:
            # Another thread must not get the SDK's lock meanwhile.
            result: list[bool] = []
            thread = threading.Thread(
                target=lambda: result.append(ci._lock.acquire(blocking=False))
            )
            thread.start()
            thread.join()
            held.append(result == [False])
            done(None)

    ci, _ = make_ci(store=Probe())
    ci.persist()
    assert held == [True]


# -- sending (7) -----------------------------------------------------------


def test_send_after_the_period_then_clean_and_persist(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, store = make_ci(store=MemoryStore(data=finished_visit()))
    clock.set(AFTER)
    ci.persist_and_send()
    assert store.sent == [
        '{"idsite":7,"visits":[{"action_name":"Main","period_start":'
        '1705276800,"period_end":1705881600,"times":2}],"events":[]}'
    ]
    assert store.visits == []
    assert store.persist_count == 1


def test_nothing_is_sent_while_the_period_runs(
    make_ci: MakeCi, clock: FrozenClock
) -> None:
    ci, store = make_ci(store=MemoryStore(data=finished_visit()))
    clock.set(utc(2024, 1, 22))
    ci.persist_and_send()
    assert store.sent == []


def test_send_uses_server_and_timeout(clock: FrozenClock) -> None:
    calls: list[tuple[str, float]] = []
    store = MemoryStore(
        data=finished_visit(),
        transport=lambda data, server, timeout: calls.append(
            (server, timeout)
        ),
    )
    ci = CleanInsights(
        {
            "server": SERVER,
            "siteId": 7,
            "timeout": 2.5,
            "campaigns": {
                GRANTED: {
                    "start": "2024-01-01T00:00:00Z",
                    "end": "2024-12-31T00:00:00Z",
                    "aggregationPeriodLength": 7,
                }
            },
        },
        store,
    )
    clock.set(AFTER)
    ci.persist_and_send()
    assert calls == [(SERVER, 2.5)]


def test_only_one_send_in_flight(clock: FrozenClock) -> None:
    store = HeldStore(data=finished_visit())
    ci = CleanInsights(_conf(), store)
    clock.set(AFTER)
    ci.persist_and_send()
    ci.persist_and_send()
    assert len(store.bodies) == 1
    assert ci.sending is True
    store.send_dones[0](None)
    assert ci.sending is False
    assert store.visits == []


def test_failed_send_keeps_the_data(clock: FrozenClock) -> None:
    store = HeldStore(data=finished_visit())
    ci = CleanInsights(_conf(), store)
    clock.set(AFTER)
    ci.persist_and_send()
    store.send_dones[0](SendError("HTTP Error 503: busy", 503))
    assert (ci.sending, ci.failed_submissions) == (False, 1)
    assert ci.last_failed_submission == AFTER
    assert [v.times for v in store.visits] == [2]


def test_send_that_raises_counts_as_a_failure(clock: FrozenClock) -> None:
    class Raising(MemoryStore):
        def send(
            self, data: str, server: str, timeout: float, done: Done
        ) -> None:
            raise RuntimeError("bug in the store")

    store = Raising(data=finished_visit())
    ci = CleanInsights(_conf(), store)
    clock.set(AFTER)
    ci.persist_and_send()
    assert (ci.sending, ci.failed_submissions) == (False, 1)
    assert len(store.visits) == 1


def test_watchdog_ends_a_send_that_never_reports(clock: FrozenClock) -> None:
    store = HeldStore(data=finished_visit())
    ci = CleanInsights(_conf(timeout=0.05), store)
    ci.send_watchdog_margin_s = 0.05
    clock.set(AFTER)
    ci.persist_and_send()
    assert ci.sending is True
    assert wait_until(lambda: not ci.sending)
    assert ci.failed_submissions == 1
    assert len(store.visits) == 1


def test_success_after_the_watchdog_still_cleans(clock: FrozenClock) -> None:
    store = HeldStore(data=finished_visit())
    ci = CleanInsights(_conf(timeout=0.05), store)
    ci.send_watchdog_margin_s = 0.05
    clock.set(AFTER)
    ci.persist_and_send()
    assert wait_until(lambda: not ci.sending)
    store.send_dones[0](None)
    assert store.visits == []
    assert ci.failed_submissions == 0


def test_second_done_is_ignored(clock: FrozenClock) -> None:
    store = HeldStore(data=finished_visit())
    ci = CleanInsights(_conf(), store)
    clock.set(AFTER)
    ci.persist_and_send()
    store.send_dones[0](SendError("HTTP Error 500: x", 500))
    store.send_dones[0](None)
    assert ci.failed_submissions == 1
    assert len(store.visits) == 1


def test_done_from_another_thread(clock: FrozenClock) -> None:
    class Threaded(MemoryStore):
        def send(
            self, data: str, server: str, timeout: float, done: Done
        ) -> None:
            threading.Thread(target=done, args=(None,)).start()

    store = Threaded(data=finished_visit())
    ci = CleanInsights(_conf(), store)
    clock.set(AFTER)
    ci.persist_and_send()
    assert wait_until(lambda: not ci.sending)
    assert store.visits == []


def test_synchronous_persist_waiting_on_the_senders_worker_cannot_deadlock(
    clock: FrozenClock,
) -> None:
    # One worker runs both sends and writes; the send's done runs on that
    # worker while the app thread holds the SDK lock, waiting for a write
    # queued behind the send.
    import queue

    jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
    send_started = threading.Event()

    def work() -> None:
        while (job := jobs.get()) is not None:
            job()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()

    class OneWorker(MemoryStore):
        def persist(self, asynchronous: bool, done: Done) -> None:
            finished = threading.Event()

            def write() -> None:
                done(None)
                finished.set()

            jobs.put(write)
            if not asynchronous:
                finished.wait()

        def send(
            self, data: str, server: str, timeout: float, done: Done
        ) -> None:
            def deliver() -> None:
                send_started.set()
                time.sleep(0.05)
                done(None)

            jobs.put(deliver)

    store = OneWorker(data=finished_visit())
    ci = CleanInsights(_conf(), store)
    clock.set(AFTER)
    ci.persist_and_send()
    assert send_started.wait(5)
    app = threading.Thread(target=ci.persist)
    app.start()
    app.join(5)
    jobs.put(None)
    assert not app.is_alive(), "deadlock"
    assert wait_until(lambda: not ci.sending)
    assert store.visits == []


# -- backoff (8) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("timing", "expected_waits_s"),
    [
        (
            {"timeout": 10, "maxRetryDelay": 1800},
            [20, 40, 80, 160, 320, 640, 1280, 1800, 1800],
        ),
        (
            {},  # the defaults: 5 s and 3600 s
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600],
        ),
    ],
    ids=["spec-example", "defaults"],
)
def test_backoff_doubles_from_the_timeout_up_to_the_cap(
    clock: FrozenClock,
    timing: dict[str, float],
    expected_waits_s: list[float],
) -> None:
    attempts: list[Any] = []

    def refuse(data: str, server: str, timeout: float) -> None:
        attempts.append(clock.now())
        raise SendError("HTTP Error 503: busy", 503)

    store = MemoryStore(data=finished_visit(), transport=refuse)
    ci = CleanInsights(_conf(**timing), store)
    clock.set(AFTER)
    ci.persist_and_send()
    waits_s: list[float] = []
    for _ in expected_waits_s:
        failed_at = clock.now()
        while len(attempts) == len(waits_s) + 1:
            clock.advance(timedelta(seconds=1))
            ci.persist_and_send()
        waits_s.append((attempts[-1] - failed_at).total_seconds())
    assert waits_s == expected_waits_s


def test_backoff_allows_the_attempt_at_exactly_the_wait(
    clock: FrozenClock,
) -> None:
    store = HeldStore(data=finished_visit())
    ci = CleanInsights(_conf(), store)  # timeout 5 s
    clock.set(AFTER)
    ci.persist_and_send()
    store.send_dones[0](SendError("HTTP Error 502: x", 502))
    clock.advance(timedelta(seconds=10) - timedelta(microseconds=1))
    ci.persist_and_send()
    assert len(store.bodies) == 1
    clock.advance(timedelta(microseconds=1))
    ci.persist_and_send()
    assert len(store.bodies) == 2


def test_success_resets_the_backoff(clock: FrozenClock) -> None:
    store = HeldStore(data=finished_visit())
    ci = CleanInsights(_conf(), store)
    clock.set(AFTER)
    ci.persist_and_send()
    store.send_dones[0](SendError("HTTP Error 502: x", 502))
    clock.advance(timedelta(seconds=10))
    ci.persist_and_send()
    store.send_dones[1](None)
    assert (ci.failed_submissions, ci.last_failed_submission) == (
        0,
        utc(1970, 1, 1),
    )


def _conf(**extra: Any) -> dict[str, Any]:
    return {
        "server": SERVER,
        "siteId": 7,
        "campaigns": {
            GRANTED: {
                "start": "2024-01-01T00:00:00Z",
                "end": "2024-12-31T23:59:59Z",
                "aggregationPeriodLength": 7,
            }
        },
        **extra,
    }
