"""Crash safety: SIGKILL a persisting or rotating child at random moments.

Every run kills a real child process (forked from a forkserver) at a
random instant and then checks that the store opens and holds the last
acknowledged state or a newer one. ``--runs N`` (or the environment
variable ``STORAGE_CRASH_RUNS``) changes how many runs each harness makes;
the seed is printed so a failing run can be replayed with
``STORAGE_CRASH_SEED``.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
import random
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import crash_child
import pytest
from storage_fakes import FileKeyring

from secure_store.errors import StoreLockedError
from secure_store.storage import (
    KeyringKeysets,
    Keyset,
    SealedFile,
    open_sealed,
    rotate,
)

if TYPE_CHECKING:
    from secure_store.secure_store import SecureStore

PERSIST_RUNS = 200
ROTATION_RUNS = 100
SECURE_STORE_RUNS = 100
# Long enough for several writes of up to 200 kB with two fsyncs each, so a
# kill lands before, during and after writes alike.
MAX_KILL_DELAY_S = 0.03
ROTATION_MAX_KILL_DELAY_S = 0.05
CHILD_TIMEOUT_S = 20.0
STORE_NAME = "crash"
ROTATION_PLAINTEXT = json.dumps({"visits": ["z" * 300_000]}).encode()


@pytest.fixture(scope="module")
def forkserver() -> ForkServerContext:
    """A forkserver that has imported the children's code already.

    Python 3.11's forkserver ignores the parent's sys.path while it
    preloads, so PYTHONPATH carries it; without the preload every child
    would spend about 40 ms importing.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["crash_child", "storage_fakes", "secure_store.secure_store"]
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
        multiprocessing.forkserver.ensure_running()
    return context


@pytest.fixture
def runs(request: pytest.FixtureRequest) -> Callable[[int], int]:
    """``--runs N`` (hook in tests/conftest.py) or ``STORAGE_CRASH_RUNS``."""
    chosen = request.config.getoption("--runs", default=None)
    if chosen is None:
        chosen = os.environ.get("STORAGE_CRASH_RUNS")

    def how_many(default: int) -> int:
        return int(chosen) if chosen is not None else default

    return how_many


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("STORAGE_CRASH_SEED", random.randrange(2**32)))
    print(f"crash harness seed: STORAGE_CRASH_SEED={seed}")
    return random.Random(seed)


def start(
    context: ForkServerContext, target: Callable[..., None], *args: Any
) -> tuple[BaseProcess, Connection]:
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(*args, sender))
    process.daemon = True
    process.start()
    sender.close()
    return process, receiver


def expect(receiver: Connection, kind: str) -> Any:
    assert receiver.poll(CHILD_TIMEOUT_S), f"child sent no {kind!r}"
    got_kind, value = receiver.recv()
    assert got_kind == kind, f"expected {kind!r}, got {got_kind!r}"
    return value


def kill_and_drain(
    process: BaseProcess, receiver: Connection
) -> list[tuple[str, Any]]:
    """SIGKILL the child and return every message it sent before dying."""
    process.kill()
    process.join(CHILD_TIMEOUT_S)
    assert process.exitcode == -9
    messages = []
    while True:
        try:
            if not receiver.poll(0):
                break
            messages.append(receiver.recv())
        except (EOFError, OSError):  # the child died mid-message
            break
    receiver.close()
    return messages


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_persist_survives_sigkill_at_random_moments(
    tmp_path: Path,
    forkserver: ForkServerContext,
    runs: Callable[[int], int],
    rng: random.Random,
) -> None:
    total = runs(PERSIST_RUNS)
    keyset = Keyset.generate()
    sealed = SealedFile(tmp_path / "store" / "crash.sealed", STORE_NAME)
    sealed.write(crash_child.store_plaintext(0, 10), keyset)
    verified = 0
    seen: Counter[str] = Counter()
    started = time.monotonic()

    for run in range(total):
        child, acks = start(
            forkserver,
            crash_child.persist_loop,
            str(sealed.path),
            STORE_NAME,
            keyset.to_json(),
            verified,
            rng.randrange(2**32),
        )
        expect(acks, "ready")
        time.sleep(rng.uniform(0, MAX_KILL_DELAY_S))
        messages = kill_and_drain(child, acks)

        acked = [value for kind, value in messages if kind == "ack"]
        last_acked = max(acked, default=verified)
        leftovers = temp_files(sealed.folder)
        for leftover in leftovers:
            assert stat.S_IMODE(leftover.stat().st_mode) == 0o600
        counter = crash_child.counter_of(sealed.read(keyset))

        assert counter in (last_acked, last_acked + 1), f"run {run}"
        assert temp_files(sealed.folder) == []
        seen["killed with a temp file on disk"] += bool(leftovers)
        seen["killed after a write, before its ack"] += (
            counter == last_acked + 1
        )
        seen["writes acknowledged"] += len(acked)
        verified = counter

    elapsed = time.monotonic() - started
    print(f"persist crash harness: {total} kills in {elapsed:.1f} s; {seen}")
    if total >= 50:
        # The harness proves nothing unless kills land inside writes.
        assert seen["killed with a temp file on disk"] > 0


def test_rotation_survives_sigkill_and_a_rerun_finishes_it(
    tmp_path: Path,
    forkserver: ForkServerContext,
    runs: Callable[[int], int],
    rng: random.Random,
) -> None:
    total = runs(ROTATION_RUNS)
    keyring_path = tmp_path / "keyring.json"
    keysets = KeyringKeysets(backend=FileKeyring(keyring_path))
    sealed = SealedFile(tmp_path / "store" / "crash.sealed", STORE_NAME)
    sealed.write(ROTATION_PLAINTEXT, keysets.create(STORE_NAME))
    seen: Counter[str] = Counter()
    started = time.monotonic()

    for run in range(total):
        child, acks = start(
            forkserver,
            crash_child.rotate_loop,
            str(sealed.path),
            STORE_NAME,
            str(keyring_path),
        )
        expect(acks, "ready")
        time.sleep(rng.uniform(0, ROTATION_MAX_KILL_DELAY_S))
        messages = kill_and_drain(child, acks)

        keyset = keysets.load(STORE_NAME)
        assert keyset is not None, f"run {run}: keyset gone"
        file_key_id = sealed.header().key_id
        data = sealed.path.read_bytes()
        assert open_sealed(data, keyset, STORE_NAME) == ROTATION_PLAINTEXT
        seen[f"killed with {len(keyset.keys)} key(s) in the keyring"] += 1
        seen["killed with the file behind the primary"] += (
            file_key_id != keyset.primary_id
        )
        seen["rotations acknowledged"] += sum(
            kind == "ack" for kind, _ in messages
        )

        rotate(sealed.path, STORE_NAME, keysets)

        after = keysets.load(STORE_NAME)
        assert after is not None
        assert len(after.keys) == 1, f"run {run}: {after!r}"
        assert sealed.header().key_id == after.primary_id
        assert sealed.read(after) == ROTATION_PLAINTEXT

    elapsed = time.monotonic() - started
    print(f"rotation crash harness: {total} kills in {elapsed:.1f} s; {seen}")
    if total >= 50:
        assert seen["killed with 2 key(s) in the keyring"] > 0


def open_secure_store(path: Path, keyring_path: Path) -> SecureStore:
    # Imported here: a broken SecureStore fails this test, not the module.
    from secure_store.secure_store import SecureStore

    return SecureStore(
        name=STORE_NAME,
        path=path,
        keyring_backend=FileKeyring(keyring_path),
    )


def test_secure_store_persist_survives_sigkill_at_random_moments(
    tmp_path: Path,
    forkserver: ForkServerContext,
    runs: Callable[[int], int],
    rng: random.Random,
) -> None:
    from secure_store.cleaninsights import Visit

    total = runs(SECURE_STORE_RUNS)
    path = tmp_path / "store" / "crash.sealed"
    keyring_path = tmp_path / "keyring.json"
    with open_secure_store(path, keyring_path) as store:
        store.visits = [Visit(["crash", "counter"], "crash", times=1)]
        store.persist(False, lambda error: None)
    verified = 1
    seen: Counter[str] = Counter()
    started = time.monotonic()

    for run in range(total):
        child, acks = start(
            forkserver,
            crash_child.secure_store_persist_loop,
            str(path),
            STORE_NAME,
            str(keyring_path),
            verified,
            rng.randrange(2**32),
        )
        expect(acks, "ready")
        time.sleep(rng.uniform(0, MAX_KILL_DELAY_S))
        messages = kill_and_drain(child, acks)

        assert [m for m in messages if m[0] == "error"] == []
        acked = [value for kind, value in messages if kind == "ack"]
        last_acked = max(acked, default=verified)
        seen["killed with a temp file on disk"] += bool(
            temp_files(path.parent)
        )
        with open_secure_store(path, keyring_path) as store:
            assert store.load_error is None, f"run {run}"
            assert store.quarantined == []
            counter = store.visits[0].times
        assert counter >= last_acked, f"run {run}"
        assert temp_files(path.parent) == []
        seen["newer than the last ack"] += counter > last_acked
        seen["persists acknowledged"] += len(acked)
        verified = counter

    elapsed = time.monotonic() - started
    print(
        f"SecureStore crash harness: {total} kills in {elapsed:.1f} s; {seen}"
    )


# -- two writers --


def run_two_writers(
    forkserver: ForkServerContext,
    sealed: SealedFile,
    keyset: Keyset,
    writes: int,
    lock_timeout_s: float,
) -> tuple[Counter[str], int]:
    """Two processes write concurrently while this one keeps reading."""
    children = [
        start(
            forkserver,
            crash_child.writer_loop,
            str(sealed.path),
            STORE_NAME,
            keyset.to_json(),
            writer,
            writes,
            lock_timeout_s,
        )
        for writer in (1, 2)
    ]
    for _, acks in children:
        expect(acks, "ready")

    reads = 0
    outcomes: Counter[str] = Counter()
    pending = {id(acks): acks for _, acks in children}
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        if sealed.exists():  # a reader never sees a half-written file
            document = json.loads(sealed.read(keyset))
            assert document["writer"] in (1, 2)
            reads += 1
        for key, acks in list(pending.items()):
            while key in pending and acks.poll(0):
                kind, detail = acks.recv()
                outcomes[f"{kind} {detail}" if kind == "error" else kind] += 1
                if kind == "done":
                    del pending[key]
    for child, _ in children:
        child.join(CHILD_TIMEOUT_S)
    assert pending == {}
    return outcomes, reads


def test_two_processes_persisting_concurrently_wait_for_each_other(
    tmp_path: Path, forkserver: ForkServerContext
) -> None:
    keyset = Keyset.generate()
    sealed = SealedFile(tmp_path / "store" / "crash.sealed", STORE_NAME)

    outcomes, reads = run_two_writers(forkserver, sealed, keyset, 40, 10.0)

    assert outcomes == Counter({"ok": 80, "done": 2})
    assert reads > 0
    final = json.loads(sealed.read(keyset))
    assert final["step"] == 39


def test_two_processes_that_cannot_wait_get_store_locked_only(
    tmp_path: Path, forkserver: ForkServerContext
) -> None:
    keyset = Keyset.generate()
    sealed = SealedFile(tmp_path / "store" / "crash.sealed", STORE_NAME)

    outcomes, _ = run_two_writers(forkserver, sealed, keyset, 40, 0.0)

    print(f"two writers without waiting: {outcomes}")
    assert set(outcomes) <= {"ok", "done", "error StoreLockedError"}
    assert outcomes["ok"] + outcomes["error StoreLockedError"] == 80
    assert outcomes["ok"] > 0
    assert json.loads(sealed.read(keyset))["writer"] in (1, 2)


def test_a_writer_blocked_by_another_process_gets_store_locked(
    tmp_path: Path, forkserver: ForkServerContext
) -> None:
    path = tmp_path / "store" / "crash.sealed"
    holder, acks = start(
        forkserver, crash_child.lock_holder, str(path), STORE_NAME, 3.0
    )
    expect(acks, "locked")
    sealed = SealedFile(path, STORE_NAME, lock_timeout_s=0.3)

    started = time.monotonic()
    with pytest.raises(StoreLockedError, match="another process"):
        sealed.write(b"{}", Keyset.generate())
    waited = time.monotonic() - started

    holder.kill()
    holder.join(CHILD_TIMEOUT_S)
    assert 0.3 <= waited < 1.5
    assert not sealed.exists()


def test_the_lock_of_a_killed_writer_is_free_at_once(
    tmp_path: Path, forkserver: ForkServerContext
) -> None:
    path = tmp_path / "store" / "crash.sealed"
    holder, acks = start(
        forkserver, crash_child.lock_holder, str(path), STORE_NAME, 30.0
    )
    expect(acks, "locked")
    kill_and_drain(holder, acks)
    sealed = SealedFile(path, STORE_NAME, lock_timeout_s=0.5)
    keyset = Keyset.generate()

    sealed.write(b"{}", keyset)

    assert sealed.read(keyset) == b"{}"
