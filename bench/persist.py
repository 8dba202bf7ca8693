"""Sealed persist and load (SecureStore) against the plaintext FileStore.

Both stores hold the same data points and write the same way: a temp
file, fsync, rename, fsync of the folder. The keyring is an in-memory
backend, so its cost (reported once, per call) is not in the figures.
``load`` is opening the store: read, (open,) parse and build the points.

Run: ``python -m bench.persist [--quick]``
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from secure_store.cleaninsights.datapoints import Event, Visit
from secure_store.cleaninsights.store import FileStore, write_atomically
from secure_store.demo.keyring_backend import MemoryKeyring
from secure_store.secure_store import SecureStore
from secure_store.storage.keys import KeyringKeysets
from secure_store.storage.sealed_file import SealedFile, seal

from . import _common
from ._common import median, ms

TARGET_RATIO = 1.3
# Fewer rounds for bigger stores: one round of 100,000 points takes about
# a second, and the spread of the median is small by then.
REPEATS = {100: 41, 1_000: 21, 10_000: 15, 100_000: 7}
QUICK_REPEATS = 5
KEYRING_TIMING_S = 0.3
STORE_NAME = "bench"


def _check_done(error: Exception | None) -> None:
    if error is not None:
        raise error


class Pair:
    """A sealed and a plaintext store holding the same points."""

    def __init__(
        self,
        folder: Path,
        keyring: MemoryKeyring,
        visits: list[Visit],
        events: list[Event],
    ) -> None:
        self.count = len(visits) + len(events)
        self.keyring = keyring
        self.sealed_path = folder / f"{STORE_NAME}.sstore"
        self.plain_path = folder / f"{STORE_NAME}.json"
        self.sealed = self.open_sealed()
        self.plain = self.open_plain()
        for store in (self.sealed, self.plain):
            store.visits = list(visits)
            store.events = list(events)
            store.persist(False, _check_done)

    def open_sealed(self) -> SecureStore:
        """Open the sealed store from its file (the measured ``load``)."""
        return SecureStore(
            name=STORE_NAME,
            path=self.sealed_path,
            keyring_backend=self.keyring,
        )

    def open_plain(self) -> FileStore:
        """Open the plaintext store from its file (the baseline ``load``)."""
        return FileStore(self.plain_path)

    def checked(
        self, open_store: Callable[[], SecureStore | FileStore]
    ) -> Callable[[], SecureStore | FileStore]:
        """Wrap ``open_store`` to fail unless every point came back.

        A sealed store that cannot be opened starts empty, which would
        be a very fast and very wrong figure.
        """

        def call() -> SecureStore | FileStore:
            store = open_store()
            found = len(store.visits) + len(store.events)
            if found != self.count:
                store_close = getattr(store, "close", None)
                if store_close is not None:
                    store_close()
                raise RuntimeError(
                    f"loaded {found} of {self.count} points from "
                    f"{type(store).__name__}"
                )
            return store

        return call

    def close(self) -> None:
        """Stop the stores' workers."""
        self.sealed.close()
        self.plain.close()


def breakdown(pair: Pair, repeat: int) -> list[list[str]]:
    """Time the steps of a sealed persist and load, for the profile table."""
    store = pair.sealed
    snapshot = store.to_json().encode("utf-8")
    keysets = KeyringKeysets(backend=pair.keyring)
    keyset = keysets.load(STORE_NAME)
    assert keyset is not None
    sealed_file = SealedFile(pair.sealed_path, STORE_NAME)
    scratch = pair.plain_path.with_name("scratch.json")
    steps: dict[str, Callable[[], object]] = {
        "to_json + encode": lambda: store.to_json().encode("utf-8"),
        "seal (AEAD only)": lambda: seal(snapshot, keyset, STORE_NAME),
        "SealedFile.write": lambda: sealed_file.write(snapshot, keyset),
        "write_atomically (plain)": lambda: write_atomically(
            scratch, snapshot
        ),
        "read + json.loads (plain)": lambda: json.loads(
            pair.plain_path.read_bytes()
        ),
        "SealedFile.read + json.loads": lambda: json.loads(
            sealed_file.read(keyset)
        ),
    }
    times = _common.interleaved(steps, repeat)
    scratch.unlink(missing_ok=True)
    return [
        [str(pair.count), name, ms(median(t))] for name, t in times.items()
    ]


def keyring_call_s(keyring: MemoryKeyring) -> float:
    """Seconds per keyset load through KeyringKeysets (deadline thread)."""
    keysets = KeyringKeysets(backend=keyring)
    return _common.seconds_per_call(
        lambda: keysets.load(STORE_NAME), KEYRING_TIMING_S
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the tables and the ratio line; return 0."""
    args = _common.parse_args(__doc__ or "", argv)
    counts = (
        _common.QUICK_POINT_COUNTS if args.quick else _common.FULL_POINT_COUNTS
    )
    _common.header("persist: SecureStore (sealed) vs FileStore", args.quick)
    rows: list[list[str]] = []
    steps: list[list[str]] = []
    ratios: list[tuple[str, float]] = []
    keyring_s = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-persist-") as tmp:
        for count in counts:
            repeat = QUICK_REPEATS if args.quick else REPEATS[count]
            folder = Path(tmp) / str(count)
            keyring = MemoryKeyring()
            pair = Pair(folder, keyring, *_common.sample_points(count))
            try:
                persists = _common.interleaved(
                    {
                        "plain": functools.partial(
                            pair.plain.persist, False, _check_done
                        ),
                        "sealed": functools.partial(
                            pair.sealed.persist, False, _check_done
                        ),
                    },
                    repeat,
                )
                loads = _common.interleaved(
                    {
                        "plain": pair.checked(pair.open_plain),
                        "sealed": pair.checked(pair.open_sealed),
                    },
                    repeat,
                )
                steps += breakdown(pair, repeat)
                keyring_s = keyring_call_s(keyring)
            finally:
                pair.close()
            persist_ratio = median(persists["sealed"]) / median(
                persists["plain"]
            )
            load_ratio = median(loads["sealed"]) / median(loads["plain"])
            ratios += [
                (f"persist@{count}", persist_ratio),
                (f"load@{count}", load_ratio),
            ]
            rows.append(
                [
                    f"{count:,}",
                    str(repeat),
                    ms(median(persists["plain"])),
                    ms(median(persists["sealed"])),
                    f"{persist_ratio:.2f}",
                    ms(median(loads["plain"])),
                    ms(median(loads["sealed"])),
                    f"{load_ratio:.2f}",
                    f"{pair.plain_path.stat().st_size:,}",
                    f"{pair.sealed_path.stat().st_size:,}",
                ]
            )
    _common.print_table(
        [
            "points",
            "rounds",
            "plain persist ms",
            "sealed persist ms",
            "ratio",
            "plain load ms",
            "sealed load ms",
            "ratio",
            "plain bytes",
            "sealed bytes",
        ],
        rows,
    )
    print()
    print("Steps of a sealed persist and load (median ms):")
    _common.print_table(["points", "step", "ms"], steps)
    print()
    print(
        f"keyring: {keyring_s * 1e6:.0f} us per keyset load through "
        "KeyringKeysets (in-memory backend; the deadline thread is the cost)"
    )
    met = all(value <= TARGET_RATIO for _, value in ratios)
    _common.print_ratios(ratios, f"sealed/plain <= {TARGET_RATIO}x", met)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
