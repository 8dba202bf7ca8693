"""Shared parts of the benchmarks: arguments, timing, tables, test data."""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

import cryptography

from secure_store.cleaninsights.datapoints import Event, Visit

#: Every ratio line starts with this, so tools and tests can find it.
RATIO_PREFIX = "ratios:"
#: Measured stores hold this many data points (the issue's sizes).
FULL_POINT_COUNTS = (100, 10_000, 100_000)
#: ``--quick`` stores: big enough to run every code path, fast to smoke.
QUICK_POINT_COUNTS = (100, 1_000)
# Test data is the same in every run, so runs can be compared.
DATA_SEED = 20260104
CAMPAIGN_IDS = ("main", "onboarding", "player")
PERIOD_DAYS = 7
PERIOD_COUNT = 52
FIRST_PERIOD = datetime(2026, 1, 5, tzinfo=UTC)
# About two thirds of real Clean Insights points are visits.
VISIT_SHARE = 0.7
SCENES = tuple(f"Scene{index}" for index in range(40))
CATEGORIES = tuple(f"category{index}" for index in range(10))
ACTIONS = tuple(f"action{index}" for index in range(20))
NAMES = tuple(f"item-{index}" for index in range(100))


def parse_args(
    description: str, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse the options every benchmark takes (just ``--quick``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few repetitions (a smoke run of seconds)",
    )
    return parser.parse_args(argv)


def machine() -> str:
    """Describe where the figures were measured, for the table's head."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{stamp}; {os.cpu_count()} cores, {platform.machine()}, "
        f"{platform.system()} {platform.release()}; Python "
        f"{platform.python_version()}, cryptography {cryptography.__version__}"
    )


def header(title: str, quick: bool) -> None:
    """Print the benchmark's title and the machine it runs on."""
    print(f"# {title}{' (--quick)' if quick else ''}")
    print(f"# {machine()}")


# -- test data ---------------------------------------------------------------


def _period(rng: random.Random) -> tuple[datetime, datetime]:
    start = FIRST_PERIOD + timedelta(
        days=PERIOD_DAYS * rng.randrange(PERIOD_COUNT)
    )
    return start, start + timedelta(days=PERIOD_DAYS, milliseconds=-1)


def sample_points(count: int) -> tuple[list[Visit], list[Event]]:
    """Return ``count`` realistic data points: visits, then events.

    Points spread over three campaigns and a year of weekly periods, with
    scene paths one to three deep and events with and without names and
    values; the same ``count`` always gives the same points.
    """
    rng = random.Random(DATA_SEED)
    visits: list[Visit] = []
    events: list[Event] = []
    visit_count = round(count * VISIT_SHARE)
    for _ in range(visit_count):
        first, last = _period(rng)
        path = [rng.choice(SCENES) for _ in range(rng.randint(1, 3))]
        visits.append(
            Visit(
                path,
                rng.choice(CAMPAIGN_IDS),
                rng.randint(1, 50),
                first,
                last,
            )
        )
    for _ in range(count - visit_count):
        first, last = _period(rng)
        events.append(
            Event(
                rng.choice(CATEGORIES),
                rng.choice(ACTIONS),
                rng.choice(NAMES) if rng.random() < 0.8 else None,
                round(rng.uniform(0, 1000), 2) if rng.random() < 0.6 else None,
                rng.choice(CAMPAIGN_IDS),
                rng.randint(1, 50),
                first,
                last,
            )
        )
    return visits, events


# -- a keyring that is not part of the figures -------------------------------


# -- timing ------------------------------------------------------------------


def timed(call: Callable[[], object]) -> float:
    """Return the seconds one call of ``call`` took (after a collection).

    What the call returns is closed afterwards when it has a ``close``
    method (a store it opened), outside the measured time.
    """
    gc.collect()
    started = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - started
    close = getattr(result, "close", None)
    if callable(close):
        close()
    return elapsed


def interleaved(
    calls: dict[str, Callable[[], object]], repeat: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time each of ``calls`` ``repeat`` times, taking turns.

    Taking turns (and reversing the order every round) spreads a slow
    spell of the machine, such as a busy disk, over every contender
    instead of charging it to one.
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeat):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(timed(calls[name]))
    return times


def median(values: Iterable[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    rank = max(1, round(share * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def seconds_per_call(call: Callable[[], object], min_time_s: float) -> float:
    """Seconds per call of a fast ``call``, timed over ``min_time_s``."""
    count = 0
    started = time.perf_counter()
    deadline = started + min_time_s
    while True:
        call()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return (now - started) / count


def fastest_interleaved(
    calls: dict[str, Callable[[], object]], rounds: int, per_round_s: float
) -> dict[str, float]:
    """Seconds per call of each fast call: the best round, taking turns.

    For CPU-bound calls the fastest round is the one least disturbed by
    the rest of the machine (the ``timeit`` convention); taking turns
    gives every contender the same chances at a quiet spell.
    """
    names = list(calls)
    for name in names:
        calls[name]()
    best = {name: float("inf") for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            best[name] = min(
                best[name], seconds_per_call(calls[name], per_round_s)
            )
    return best


# -- output ------------------------------------------------------------------


def ms(seconds: float) -> str:
    """Format seconds as milliseconds for a table cell."""
    return f"{seconds * 1000:.2f}"


def us(seconds: float) -> str:
    """Format seconds as microseconds for a table cell."""
    return f"{seconds * 1e6:.0f}"


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Print rows as a Markdown table: numbers right, words left."""
    body = [list(map(str, row)) for row in rows]
    widths = [
        max(len(headers[column]), *(len(row[column]) for row in body))
        for column in range(len(headers))
    ]
    numeric = [
        all(_looks_numeric(row[column]) for row in body)
        for column in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    print(line(headers))
    print(
        "|"
        + "|".join(
            "-" * (width + 1) + (":" if right else "-")
            for width, right in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    for row in body:
        print(line(row))


def _looks_numeric(cell: str) -> bool:
    return bool(cell) and (cell[0].isdigit() or cell[0] in "+-.")


def verdict(met: bool) -> str:
    """Say whether a target was met, for tables and ratio lines."""
    return "met" if met else "MISSED"


def print_ratios(
    ratios: Sequence[tuple[str, float]],
    target: str,
    met: bool,
    extra: str = "",
) -> None:
    """Print the final line: each ratio, the target and whether it held."""
    parts = " ".join(f"{name}={value:.2f}x" for name, value in ratios)
    if extra:
        parts += f" {extra}"
    print(f"{RATIO_PREFIX} {parts} (target {target}: {verdict(met)})")
