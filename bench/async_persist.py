"""The caller's time in an asynchronous persist, and how writes coalesce.

First figure: how long ``persist(asynchronous=True)`` keeps the caller,
against a synchronous ``persist`` of the same SecureStore (the caller
then waits for the whole seal and durable write). Second: how many file
writes 1,000 back-to-back asynchronous persists cause, and whether every
one of their 1,000 callbacks was called, exactly once and without error.

Run: ``python -m bench.async_persist [--quick]``
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secure_store.demo.keyring_backend import MemoryKeyring
from secure_store.secure_store import SecureStore
from secure_store.storage import sealed_file

from . import _common
from ._common import median, ms

TARGET_CALLER_SHARE = 0.10
TARGET_WRITES = 5
BURST_PERSISTS = 1_000
QUICK_BURST_PERSISTS = 200
REPEATS = {100: 41, 1_000: 21, 10_000: 15, 100_000: 5}
QUICK_REPEATS = 5
# Store sizes of the burst: a small store and a big one.
BURST_POINT_COUNTS = (100, 10_000)
QUICK_BURST_POINT_COUNTS = (100,)
WRITE_WAIT_S = 60.0
STORE_NAME = "bench"


def open_store(folder: Path, count: int) -> SecureStore:
    """A SecureStore holding ``count`` points, persisted once."""
    store = SecureStore(
        name=STORE_NAME,
        path=folder / f"{STORE_NAME}.sstore",
        keyring_backend=MemoryKeyring(),
    )
    store.visits, store.events = _common.sample_points(count)
    store.persist(False, _raise)
    return store


def _raise(error: Exception | None) -> None:
    if error is not None:
        raise error


def caller_times(
    store: SecureStore, repeat: int
) -> tuple[list[float], list[float]]:
    """Caller's seconds in async and in sync persists, taking turns.

    Each asynchronous persist is waited for (outside the measured time)
    before the next round, so a write in flight never slows the next one.
    """
    async_s: list[float] = []
    sync_s: list[float] = []
    for round_index in range(repeat + 1):
        finished = threading.Event()
        errors: list[Exception] = []

        def done(
            error: Exception | None,
            finished: threading.Event = finished,
            errors: list[Exception] = errors,
        ) -> None:
            if error is not None:
                errors.append(error)
            finished.set()

        first_async = round_index % 2 == 0
        if not first_async:
            sync_s.append(_common.timed(lambda: store.persist(False, _raise)))
        async_s.append(_common.timed(lambda: store.persist(True, done)))
        if not finished.wait(WRITE_WAIT_S):
            raise RuntimeError("an asynchronous persist never finished")
        if errors:
            raise errors[0]
        if first_async:
            sync_s.append(_common.timed(lambda: store.persist(False, _raise)))
    # The first round warms up caches and the worker thread.
    return async_s[1:], sync_s[1:]


class CountingWrites:
    """Counts sealed-file writes while installed (``with`` block)."""

    def __init__(self) -> None:
        self.count = 0
        self._original = sealed_file.SealedFile.write
        self._lock = threading.Lock()

    def __enter__(self) -> CountingWrites:
        original = self._original

        def write(file: Any, plaintext: bytes, keyset: Any) -> None:
            with self._lock:
                self.count += 1
            original(file, plaintext, keyset)

        sealed_file.SealedFile.write = write  # type: ignore[method-assign, assignment]
        return self

    def __exit__(self, *exc_info: object) -> None:
        sealed_file.SealedFile.write = (  # type: ignore[method-assign]
            self._original
        )


def burst(folder: Path, count: int, persists: int) -> dict[str, Any]:
    """Run ``persists`` back-to-back async persists; count what happened."""
    store = open_store(folder, count)
    calls: list[Exception | None] = []
    calls_lock = threading.Lock()

    def done(error: Exception | None) -> None:
        with calls_lock:
            calls.append(error)

    with CountingWrites() as writes:
        started = time.perf_counter()
        for _ in range(persists):
            store.persist(True, done)
        issued_s = time.perf_counter() - started
        store.close()
        settled_s = time.perf_counter() - started
    return {
        "writes": writes.count,
        "callbacks": len(calls),
        "errors": sum(1 for error in calls if error is not None),
        "issued_s": issued_s,
        "settled_s": settled_s,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the tables and the ratio line; return 0."""
    args = _common.parse_args(__doc__ or "", argv)
    counts = (
        _common.QUICK_POINT_COUNTS if args.quick else _common.FULL_POINT_COUNTS
    )
    burst_counts = (
        QUICK_BURST_POINT_COUNTS if args.quick else BURST_POINT_COUNTS
    )
    persists = QUICK_BURST_PERSISTS if args.quick else BURST_PERSISTS
    _common.header("async_persist: SecureStore async vs sync", args.quick)
    rows: list[list[str]] = []
    ratios: list[tuple[str, float]] = []
    bursts: list[list[str]] = []
    most_writes = 0
    every_callback = True
    with tempfile.TemporaryDirectory(prefix="bench-async-") as tmp:
        for count in counts:
            store = open_store(Path(tmp) / f"caller-{count}", count)
            try:
                repeat = QUICK_REPEATS if args.quick else REPEATS[count]
                async_s, sync_s = caller_times(store, repeat)
            finally:
                store.close()
            share = median(async_s) / median(sync_s)
            ratios.append((f"async/sync@{count}", share))
            rows.append(
                [
                    f"{count:,}",
                    str(repeat),
                    ms(median(sync_s)),
                    ms(median(async_s)),
                    f"{share:.1%}",
                ]
            )
        for count in burst_counts:
            result = burst(Path(tmp) / f"burst-{count}", count, persists)
            most_writes = max(most_writes, result["writes"])
            every_callback = every_callback and (
                result["callbacks"] == persists and result["errors"] == 0
            )
            bursts.append(
                [
                    f"{count:,}",
                    f"{persists:,}",
                    str(result["writes"]),
                    f"{result['callbacks']:,}",
                    str(result["errors"]),
                    ms(result["issued_s"]),
                    ms(result["settled_s"]),
                ]
            )
    _common.print_table(
        ["points", "rounds", "sync ms", "async (caller) ms", "async/sync"],
        rows,
    )
    print()
    print(
        f"{persists:,} back-to-back persist(asynchronous=True), then close():"
    )
    _common.print_table(
        [
            "points",
            "persists",
            "file writes",
            "callbacks",
            "errors",
            "issuing ms",
            "until written ms",
        ],
        bursts,
    )
    met = (
        all(value <= TARGET_CALLER_SHARE for _, value in ratios)
        and most_writes <= TARGET_WRITES
        and every_callback
    )
    _common.print_ratios(
        ratios,
        f"async <= {TARGET_CALLER_SHARE:.2f}x sync, <= {TARGET_WRITES} "
        f"writes per {persists:,}, every callback",
        met,
        extra=(
            f"writes_per_{persists}={most_writes} "
            f"callbacks_all_called={'yes' if every_callback else 'NO'}"
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
