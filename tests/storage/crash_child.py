"""Child processes for the crash harness: persist or rotate until killed.

Each loop acknowledges a step over a pipe only after it returned, so the
parent knows the last state the child was promised. The parent forks the
children from a forkserver that has imported this module, so a run costs
a fork instead of a Python start.
"""

from __future__ import annotations

import json
import random
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

from storage_fakes import FileKeyring

from secure_store.storage import KeyringKeysets, Keyset, SealedFile, rotate

MIN_FILLER_BYTES = 1_000
MAX_FILLER_BYTES = 200_000


def store_plaintext(counter: int, filler_bytes: int) -> bytes:
    """The store JSON a persist child writes for step ``counter``."""
    document = {"counter": counter, "filler": "x" * filler_bytes}
    return json.dumps(document).encode()


def counter_of(plaintext: bytes) -> int:
    """Read back the counter from :func:`store_plaintext`'s output."""
    counter = json.loads(plaintext)["counter"]
    assert isinstance(counter, int)
    return counter


def persist_loop(
    store_path: str,
    store_name: str,
    keyset_json: str,
    start: int,
    seed: int,
    acks: Connection,
) -> None:
    """Write counter start+1, start+2, ... and acknowledge each write."""
    rng = random.Random(seed)
    keyset = Keyset.from_json(keyset_json)
    sealed = SealedFile(Path(store_path), store_name, lock_timeout_s=30)
    acks.send(("ready", start))
    counter = start
    while True:
        counter += 1
        filler = rng.randint(MIN_FILLER_BYTES, MAX_FILLER_BYTES)
        sealed.write(store_plaintext(counter, filler), keyset)
        acks.send(("ack", counter))


def rotate_loop(
    store_path: str,
    store_name: str,
    keyring_path: str,
    acks: Connection,
) -> None:
    """Rotate the store's key again and again; acknowledge each rotation."""
    keysets = KeyringKeysets(backend=FileKeyring(keyring_path))
    acks.send(("ready", 0))
    while True:
        result = rotate(store_path, store_name, keysets, lock_timeout_s=30)
        acks.send(("ack", result.new_key_id))


def writer_loop(
    store_path: str,
    store_name: str,
    keyset_json: str,
    writer: int,
    writes: int,
    lock_timeout_s: float,
    acks: Connection,
) -> None:
    """Write ``writes`` times as ``writer``; report each outcome."""
    keyset = Keyset.from_json(keyset_json)
    sealed = SealedFile(
        Path(store_path), store_name, lock_timeout_s=lock_timeout_s
    )
    acks.send(("ready", writer))
    for step in range(writes):
        plaintext = json.dumps(
            {"writer": writer, "step": step, "filler": "y" * 50_000}
        ).encode()
        try:
            sealed.write(plaintext, keyset)
        except Exception as exc:  # reported to the parent, which asserts
            acks.send(("error", type(exc).__name__))
        else:
            acks.send(("ok", step))
    acks.send(("done", writer))


def lock_holder(
    store_path: str, store_name: str, hold_s: float, acks: Connection
) -> None:
    """Hold the store's write lock for ``hold_s`` seconds."""
    sealed = SealedFile(Path(store_path), store_name)
    with sealed.locked():
        acks.send(("locked", 0))
        time.sleep(hold_s)
    acks.send(("released", 0))


def secure_store_persist_loop(
    store_path: str,
    store_name: str,
    keyring_path: str,
    start: int,
    seed: int,
    acks: Connection,
) -> None:
    """Persist through SecureStore (sync and async mixed) until killed.

    The first visit's ``times`` is the counter; ``done(None)`` acknowledges
    it. Filler visits vary the size of each write.
    """
    from secure_store.cleaninsights import Visit
    from secure_store.secure_store import SecureStore

    rng = random.Random(seed)
    send_lock = threading.Lock()

    def acknowledge(counter: int, error: Exception | None) -> None:
        with send_lock:  # done may run on the persist worker
            if error is None:
                acks.send(("ack", counter))
            else:
                acks.send(("error", repr(error)))

    store = SecureStore(
        name=store_name,
        path=store_path,
        keyring_backend=FileKeyring(keyring_path),
    )
    with send_lock:
        acks.send(("ready", start))
    counter = start
    while True:
        counter += 1
        filler = [
            Visit(["filler", str(n)], "crash")
            for n in range(rng.randrange(2000))
        ]
        store.visits = [Visit(["crash", "counter"], "crash", times=counter)]
        store.visits += filler
        store.persist(
            rng.random() < 0.5,
            lambda error, c=counter: acknowledge(c, error),
        )
