"""Peak memory of a load and a persist: SecureStore against FileStore.

Each figure comes from a fresh Python process that imports the same
modules, opens a store of 100,000 points from its file (load), persists
it synchronously and exits. Peak Python allocations come from
``tracemalloc``; peak resident memory from ``VmHWM`` (``ru_maxrss`` where
there is no /proc), measured in a
second process without tracemalloc (which adds its own memory), in
total and as growth over the resident memory after the imports.

Run: ``python -m bench.memory [--quick]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secure_store.cleaninsights.store import FileStore
from secure_store.demo.keyring_backend import MemoryKeyring
from secure_store.secure_store import SecureStore

from . import _common

POINTS = 100_000
QUICK_POINTS = 2_000
STORE_NAME = "bench"
KEYRING_FILE = "keyring.json"
CHILD_TIMEOUT_S = 600.0
MIB = 1024 * 1024
KIB = 1024
PROC_STATUS = "/proc/self/status"
VARIANTS = ("plain", "sealed")
MODES = ("tracemalloc", "rss")


def _raise(error: Exception | None) -> None:
    if error is not None:
        raise error


def sealed_path(folder: Path) -> Path:
    """Where the sealed store of a run lives."""
    return folder / f"{STORE_NAME}.sstore"


def plain_path(folder: Path) -> Path:
    """Where the plaintext store of a run lives."""
    return folder / f"{STORE_NAME}.json"


def prepare(folder: Path, points: int) -> None:
    """Write both store files, and the sealed store's keyset for children.

    The keyset is a throwaway of this run, kept in a 0600 file so the
    child processes can put it into their in-memory keyring.
    """
    keyring = MemoryKeyring()
    visits, events = _common.sample_points(points)
    sealed = SecureStore(
        name=STORE_NAME, path=sealed_path(folder), keyring_backend=keyring
    )
    plain = FileStore(plain_path(folder))
    for store in (sealed, plain):
        store.visits, store.events = visits, events
        store.persist(False, _raise)
        store.close()
    entries = [[s, u, p] for (s, u), p in keyring.entries.items()]
    keyring_file = folder / KEYRING_FILE
    keyring_file.touch(mode=0o600)
    keyring_file.write_text(json.dumps(entries))


def _max_rss_bytes() -> int:
    """This process's peak resident memory so far, in bytes.

    Linux's ``ru_maxrss`` survives ``exec``, so a child would report its
    parent's peak; ``VmHWM`` belongs to the new program alone.
    """
    try:
        with open(PROC_STATUS) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        pass
    # Elsewhere ru_maxrss (KiB on Linux and the BSDs, bytes on macOS).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB


def child(variant: str, mode: str, folder: Path) -> dict[str, Any]:
    """Load and persist one store in this process; return what it cost."""
    entries = json.loads((folder / KEYRING_FILE).read_text())
    keyring = MemoryKeyring({(s, u): p for s, u, p in entries})
    rss_before = _max_rss_bytes()
    if mode == "tracemalloc":
        tracemalloc.start()
    store: SecureStore | FileStore
    if variant == "sealed":
        store = SecureStore(
            name=STORE_NAME, path=sealed_path(folder), keyring_backend=keyring
        )
    else:
        store = FileStore(plain_path(folder))
    points = len(store.visits) + len(store.events)
    store.persist(False, _raise)
    store.close()
    result: dict[str, Any] = {"points": points}
    if mode == "tracemalloc":
        result["peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    else:
        result["peak_bytes"] = _max_rss_bytes()
        result["rss_after_imports"] = rss_before
    return result


def run_child(variant: str, mode: str, folder: Path) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter and return its result."""
    command = [sys.executable, "-m", "bench.memory", "--child", variant]
    command += ["--mode", mode, "--folder", str(folder)]
    finished = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if finished.returncode != 0:
        raise RuntimeError(
            f"memory child {variant}/{mode} failed:\n{finished.stderr}"
        )
    result: dict[str, Any] = json.loads(finished.stdout.splitlines()[-1])
    return result


def mib(count: float) -> str:
    """Format bytes as MiB for a table cell."""
    return f"{count / MIB:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure (or, with --child, be measured); print table and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.mode, args.folder)))
        return 0

    points = QUICK_POINTS if args.quick else POINTS
    _common.header(
        "memory: SecureStore vs FileStore, load + persist", args.quick
    )
    results: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        folder = Path(tmp)
        prepare(folder, points)
        store_bytes = {
            "plain": plain_path(folder).stat().st_size,
            "sealed": sealed_path(folder).stat().st_size,
        }
        for mode in MODES:
            for variant in VARIANTS:
                results[variant, mode] = run_child(variant, mode, folder)
    for (variant, mode), result in results.items():
        if result["points"] != points:
            raise RuntimeError(
                f"{variant}/{mode} loaded {result['points']} of {points}"
            )
    rows = [
        [
            variant,
            f"{points:,}",
            mib(store_bytes[variant]),
            mib(results[variant, "tracemalloc"]["peak_bytes"]),
            mib(results[variant, "rss"]["peak_bytes"]),
            mib(
                results[variant, "rss"]["peak_bytes"]
                - results[variant, "rss"]["rss_after_imports"]
            ),
        ]
        for variant in VARIANTS
    ]
    _common.print_table(
        [
            "store",
            "points",
            "file MiB",
            "tracemalloc peak MiB",
            "peak RSS MiB",
            "RSS growth MiB",
        ],
        rows,
    )
    ratios = [
        (
            f"{mode}@{points}",
            results["sealed", mode]["peak_bytes"]
            / results["plain", mode]["peak_bytes"],
        )
        for mode in MODES
    ]
    # The issue sets no target for memory; report against 1.3x, the
    # persist target, so a regression stands out.
    _common.print_ratios(
        ratios,
        "sealed/plain <= 1.3x (informative)",
        all(value <= 1.3 for _, value in ratios),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
