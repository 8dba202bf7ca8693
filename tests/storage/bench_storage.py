"""Measure sealing, writing and rotating a 100k-data-point store.

Run from the project root::

    .venv/bin/python tests/storage/bench_storage.py            # fake keyring
    /work/shared/research/realparts/with_keyring.sh \\
        .venv/bin/python tests/storage/bench_storage.py --system-keyring

It prints the plaintext size, seal/open throughput for both AEADs, the
time of an atomic durable write and of an open, and the time of
``rotate()`` (median of ``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from storage_fakes import MemoryKeyring

from secure_store.storage import (
    KeyringKeysets,
    Keyset,
    SealedFile,
    open_sealed,
    rotate,
    seal,
)
from secure_store.storage.sealed_file import (
    AEAD_AES_256_GCM,
    AEAD_CHACHA20_POLY1305,
)

DATA_POINTS = 100_000
MIB = 1024 * 1024


def _instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def store_json(points: int, seed: int = 7) -> bytes:
    """A store JSON (the core's persisted shape) with ``points`` points.

    Half visits, half events, spread over 7 campaigns, 200 scenes, 31 event
    categories and a year of periods: about 15 MB for 100k points.
    """
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    scenes = [["Main", f"Screen {n}"] for n in range(200)]
    visits, events = [], []
    for n in range(points):
        first = start + timedelta(days=rng.randrange(300))
        common: dict[str, object] = {
            "campaignId": f"campaign-{n % 7}",
            "times": rng.randrange(1, 50),
            "first": _instant(first),
            "last": _instant(first + timedelta(days=1)),
        }
        if n % 2 == 0:
            visits.append({**common, "scenePath": rng.choice(scenes)})
        else:
            event: dict[str, object] = {
                "category": f"category-{n % 31}",
                "action": f"action-{n % 97}",
            }
            # name and value are optional; most events have neither.
            if n % 3 == 1:
                event["name"] = f"name-{n % 13}"
                event["value"] = n % 1000 / 4
            events.append({**common, **event})
    consent = {
        "granted": True,
        "start": _instant(start),
        "end": _instant(start + timedelta(days=365)),
    }
    document = {
        "consents": {
            "features": {"lang": consent, "ua": consent},
            "campaigns": {f"campaign-{n}": consent for n in range(7)},
        },
        "visits": visits,
        "events": events,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def best_of(repeat: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def median_of(repeat: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=DATA_POINTS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--system-keyring",
        action="store_true",
        help="use keyring's default backend (e.g. gnome-keyring)",
    )
    args = parser.parse_args()

    plaintext = store_json(args.points)
    size_mib = len(plaintext) / MIB
    print(f"plaintext: {args.points} data points, {len(plaintext)} bytes")

    keyset = Keyset.generate()
    for aead_id, name in (
        (AEAD_AES_256_GCM, "AES-256-GCM"),
        (AEAD_CHACHA20_POLY1305, "ChaCha20-Poly1305"),
    ):
        sealed_bytes = seal(plaintext, keyset, "bench", aead_id=aead_id)
        seal_s = best_of(
            args.repeat,
            lambda a=aead_id: seal(plaintext, keyset, "b", aead_id=a),
        )
        open_s = best_of(
            args.repeat,
            lambda s=sealed_bytes: open_sealed(s, keyset, "bench"),
        )
        print(
            f"{name}: seal {size_mib / seal_s:,.0f} MiB/s "
            f"({seal_s * 1000:.1f} ms), open {size_mib / open_s:,.0f} "
            f"MiB/s ({open_s * 1000:.1f} ms)"
        )

    if args.system_keyring:
        keysets = KeyringKeysets()
    else:
        keysets = KeyringKeysets(backend=MemoryKeyring())
    print(f"keyring backend: {keysets.backend_name}")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "store" / "bench.sealed"
        sealed = SealedFile(path, "bench")
        keysets.delete("bench")
        stored = keysets.create("bench")
        write_s = median_of(
            args.repeat, lambda: sealed.write(plaintext, stored)
        )
        read_s = median_of(args.repeat, lambda: sealed.read(stored))
        print(
            f"write (seal + temp + fsync + rename + fsync dir): "
            f"{write_s * 1000:.1f} ms; open (read + open): "
            f"{read_s * 1000:.1f} ms; file {path.stat().st_size} bytes"
        )
        rotate_s = median_of(
            args.repeat, lambda: rotate(path, "bench", keysets)
        )
        print(
            f"rotate(): median {rotate_s * 1000:.1f} ms over "
            f"{args.repeat} runs"
        )
        keysets.delete("bench")


if __name__ == "__main__":
    main()
