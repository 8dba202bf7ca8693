"""Every benchmark runs with --quick and ends with its line of ratios.

Timing targets are not checked here: a shared test machine says nothing
about them. The figures live in bench/README.md.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH_FOLDER = ROOT / "bench"
# Each quick run takes a few seconds; this only stops a hung one.
QUICK_RUN_TIMEOUT_S = 120
BENCHES = sorted(
    path.stem
    for path in BENCH_FOLDER.glob("*.py")
    if not path.stem.startswith("_")
)
# "ratios: name=1.23x name=0.98x ... (what the target is and whether
# it was met)"
RATIO_LINE = re.compile(r"^ratios: (\S+=\d+\.\d+x )+.*\(.+\)$")


@functools.cache
def run_quick(name: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bench.NAME --quick`` once per test session."""
    return subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=QUICK_RUN_TIMEOUT_S,
        check=False,
    )


def test_the_issue_benchmarks_are_all_there() -> None:
    expected = {"persist", "async_persist", "envelope", "send", "memory"}
    assert expected <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_quick_run_exits_0_and_ends_with_ratio_line(name: str) -> None:
    finished = run_quick(name)

    assert finished.returncode == 0, finished.stderr
    lines = [line for line in finished.stdout.splitlines() if line.strip()]
    assert RATIO_LINE.match(lines[-1]), finished.stdout


@pytest.mark.parametrize("name", BENCHES)
def test_quick_run_prints_a_table(name: str) -> None:
    finished = run_quick(name)

    table_rows = [
        line for line in finished.stdout.splitlines() if line.startswith("|")
    ]
    assert len(table_rows) >= 3, finished.stdout
