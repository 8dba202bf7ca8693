"""Storage through a real Secret Service: gnome-keyring on a private D-Bus.

The fixture starts its own ``dbus-daemon`` and an unlocked
``gnome-keyring-daemon`` with HOME and XDG folders in a temp folder (set
before the bus starts, so nothing the bus activates touches the real
user's keyring) and without DISPLAY (so no unlock prompt can open and
block). Everything it starts is stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import secretstorage
from keyring.backends import SecretService
from secretstorage.util import DBusAddressWrapper, format_secret, open_session

from secure_store.errors import KeyringLockedError
from secure_store.storage import (
    KeyringKeysets,
    SealedFile,
    describe,
    open_store,
    rotate,
    write_store,
)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0
KEYRING_PASSWORD = b"integration-test-password"
PLAINTEXT = b'{"visits":[{"scene":"Einstellungen/geheim"}]}'
GNOME_PRIVATE = "org.gnome.keyring.InternalUnsupportedGuiltRiddenInterface"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SessionBus:
    """A private D-Bus session bus with an unlocked gnome-keyring on it."""

    address: str
    env: dict[str, str]
    state: Path
    processes: list[subprocess.Popen[bytes]]

    @property
    def keyring_daemon(self) -> subprocess.Popen[bytes]:
        return self.processes[1]

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run a command on this bus, with its private HOME."""
        return subprocess.run(
            command,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )

    def secrets_owned(self) -> bool:
        answer = self.run(
            "dbus-send",
            "--session",
            "--print-reply=literal",
            "--reply-timeout=1000",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            "string:org.freedesktop.secrets",
        )
        return "true" in answer.stdout

    def lookup(self, store_name: str) -> str:
        """What secret-tool (libsecret, not Python) finds for a store."""
        return self.run(
            "secret-tool",
            "lookup",
            "service",
            "secure-store",
            "username",
            store_name,
        ).stdout


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)


def _stop_strays(marker: str) -> None:
    """Stop processes the bus activated (they carry our private folder)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def _read_line(stream: object, timeout_s: float) -> str:
    fileno = stream.fileno()  # type: ignore[attr-defined]
    ready, _, _ = select.select([fileno], [], [], timeout_s)
    if not ready:
        pytest.fail("dbus-daemon printed no address")
    return os.read(fileno, 4096).decode().strip()


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionBus]:
    for tool in ("dbus-daemon", "gnome-keyring-daemon", "secret-tool"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is needed: apt-get install dbus gnome-keyring "
                "libsecret-tools"
            )
    state = tmp_path_factory.mktemp("secret-service")
    home, run = state / "home", state / "run"
    home.mkdir()
    run.mkdir(mode=0o700)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_RUNTIME_DIR": str(run),
        "LANG": "C.UTF-8",
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        daemon = subprocess.Popen(
            [
                "dbus-daemon",
                "--session",
                "--nofork",
                "--nopidfile",
                f"--address=unix:path={run}/bus",
                "--print-address=1",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        processes.append(daemon)
        address = _read_line(daemon.stdout, START_TIMEOUT_S)
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        with open(state / "gnome-keyring.log", "wb") as log:
            keyring_daemon = subprocess.Popen(
                [
                    "gnome-keyring-daemon",
                    "--foreground",
                    "--unlock",
                    "--components=secrets",
                ],
                env=env,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
            )
        processes.append(keyring_daemon)
        assert keyring_daemon.stdin is not None
        keyring_daemon.stdin.write(KEYRING_PASSWORD)
        keyring_daemon.stdin.close()
        session = SessionBus(address, env, state, processes)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not session.secrets_owned():
            if time.monotonic() > deadline:
                pytest.fail(
                    "gnome-keyring-daemon did not claim "
                    "org.freedesktop.secrets: "
                    + (state / "gnome-keyring.log").read_text()
                )
            time.sleep(0.05)
        yield session
    finally:
        for process in reversed(processes):
            _stop(process)
        _stop_strays(str(run))


@pytest.fixture
def on_bus(bus: SessionBus, monkeypatch: pytest.MonkeyPatch) -> SessionBus:
    """Point this process's D-Bus clients (secretstorage) at the bus."""
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", bus.address)
    return bus


@pytest.fixture
def keysets(on_bus: SessionBus) -> KeyringKeysets:
    return KeyringKeysets(backend=SecretService.Keyring(), timeout_s=10)


@pytest.fixture
def store_name(request: pytest.FixtureRequest) -> str:
    return f"it-{request.node.name[:40]}-{random.randrange(10**9)}"


@pytest.fixture
def sealed(tmp_path: Path, store_name: str) -> SealedFile:
    return SealedFile(tmp_path / "store" / f"{store_name}.sealed", store_name)


def test_the_default_backend_on_this_session_is_secret_service(
    bus: SessionBus, store_name: str
) -> None:
    child = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)\n"
        "from secure_store.storage import KeyringKeysets\n"
        "keysets = KeyringKeysets()\n"
        f"keysets.create({store_name!r})\n"
    )
    env = dict(bus.env, PYTHONPATH=str(PROJECT_ROOT))

    done = subprocess.run(
        [sys.executable, "-c", child],
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert (
        "keyring backend in use: keyring.backends.SecretService.Keyring "
        "(priority 5)" in done.stdout
    )
    entry = json.loads(bus.lookup(store_name))
    assert sorted(entry) == ["keys", "primary", "version"]


def test_create_persist_load_rotate_through_gnome_keyring(
    on_bus: SessionBus, keysets: KeyringKeysets, sealed: SealedFile
) -> None:
    created = open_store(sealed, keysets)
    assert created.plaintext is None

    write_store(sealed, keysets, PLAINTEXT)
    loaded = open_store(sealed, keysets)
    assert loaded.plaintext == PLAINTEXT
    assert loaded.keyset == created.keyset

    result = rotate(sealed.path, sealed.store_name, keysets)
    after = open_store(sealed, keysets)
    assert after.plaintext == PLAINTEXT
    assert after.keyset.key_ids == (result.new_key_id,)
    assert result.new_key_id != created.keyset.primary_id
    entry = json.loads(on_bus.lookup(sealed.store_name))
    assert entry["primary"] == result.new_key_id
    assert list(entry["keys"]) == [str(result.new_key_id)]


def test_a_lost_key_quarantines_the_store_and_a_new_one_works(
    keysets: KeyringKeysets, sealed: SealedFile
) -> None:
    open_store(sealed, keysets)
    write_store(sealed, keysets, PLAINTEXT)
    old_data = sealed.path.read_bytes()
    keysets.delete(sealed.store_name)

    fresh = open_store(sealed, keysets)
    write_store(sealed, keysets, b"{}")

    assert fresh.plaintext is None
    assert fresh.quarantined is not None
    assert fresh.quarantined.read_bytes() == old_data
    assert open_store(sealed, keysets).plaintext == b"{}"


def test_describe_asks_gnome_keyring_whether_it_holds_the_key(
    keysets: KeyringKeysets, sealed: SealedFile
) -> None:
    open_store(sealed, keysets)
    write_store(sealed, keysets, PLAINTEXT)

    info = describe(sealed.path, sealed.store_name, keysets)

    assert info["keyring_backend"] == (
        "keyring.backends.SecretService.Keyring (priority 5)"
    )
    assert info["keyring_has_key"] is True
    assert "plaintext" not in info


def test_a_locked_collection_is_keyring_locked_and_leaves_the_store(
    on_bus: SessionBus, sealed: SealedFile
) -> None:
    connection = secretstorage.dbus_init()
    private = DBusAddressWrapper(
        "/org/freedesktop/secrets", GNOME_PRIVATE, connection
    )
    session = open_session(connection)
    password = format_secret(session, b"locktest-pw", "text/plain")
    (path,) = private.call(
        "CreateWithMasterPassword",
        "a{sv}(oayays)",
        {"org.freedesktop.Secret.Collection.Label": ("s", "locktest")},
        password,
    )
    collection = secretstorage.Collection(connection, path)
    backend = SecretService.Keyring()
    backend.preferred_collection = path
    keysets = KeyringKeysets(backend=backend, timeout_s=10)
    try:
        open_store(sealed, keysets)
        write_store(sealed, keysets, PLAINTEXT)
        data = sealed.path.read_bytes()
        names = sorted(p.name for p in sealed.folder.iterdir())
        collection.lock()

        with pytest.raises(KeyringLockedError, match="locked"):
            open_store(sealed, keysets)
        assert sealed.path.read_bytes() == data
        assert sorted(p.name for p in sealed.folder.iterdir()) == names

        private.call(
            "UnlockWithMasterPassword",
            "o(oayays)",
            path,
            format_secret(session, b"locktest-pw", "text/plain"),
        )
        assert open_store(sealed, keysets).plaintext == PLAINTEXT
    finally:
        if not collection.is_locked():
            collection.delete()


def test_a_keyring_that_stops_answering_raises_locked_at_the_deadline(
    on_bus: SessionBus, sealed: SealedFile
) -> None:
    keysets = KeyringKeysets(backend=SecretService.Keyring(), timeout_s=1.0)
    open_store(sealed, keysets)
    write_store(sealed, keysets, PLAINTEXT)
    daemon = on_bus.keyring_daemon

    os.kill(daemon.pid, signal.SIGSTOP)  # a daemon stuck on a prompt
    try:
        started = time.monotonic()
        with pytest.raises(KeyringLockedError, match="did not answer"):
            open_store(sealed, keysets)
        waited = time.monotonic() - started
    finally:
        os.kill(daemon.pid, signal.SIGCONT)

    assert 1.0 <= waited < 3.0
    resumed = KeyringKeysets(backend=SecretService.Keyring(), timeout_s=10)
    assert open_store(sealed, resumed).plaintext == PLAINTEXT


ROTATE_KEY_CLI = (
    "import sys; from secure_store.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)
# `secure-store rotate-key` takes 0.25-0.33 s here, 0.15 s of it rotating
# after Python, the keyring and the backend probe have started.
CLI_KILL_WINDOW_S = (0.08, 0.3)
CLI_RUNS = 40


@pytest.mark.slow
def test_rotate_key_killed_at_random_moments_through_gnome_keyring(
    on_bus: SessionBus,
    keysets: KeyringKeysets,
    sealed: SealedFile,
    request: pytest.FixtureRequest,
) -> None:
    runs = request.config.getoption("--runs", default=None) or CLI_RUNS
    plaintext = PLAINTEXT * 5000
    open_store(sealed, keysets)
    write_store(sealed, keysets, plaintext)
    env = dict(on_bus.env, PYTHONPATH=str(PROJECT_ROOT))
    command = [
        sys.executable,
        "-c",
        ROTATE_KEY_CLI,
        "rotate-key",
        "--store",
        str(sealed.path),
        "--name",
        sealed.store_name,
    ]
    rng = random.Random()
    two_keys = finished = 0
    started = time.monotonic()

    for run in range(int(runs)):
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(*CLI_KILL_WINDOW_S))
        child.kill()
        finished += child.wait(STOP_TIMEOUT_S) == 0

        keyset = keysets.load(sealed.store_name)
        assert keyset is not None, f"run {run}"
        assert sealed.read(keyset) == plaintext, f"run {run}"
        two_keys += len(keyset.keys) == 2
        rerun = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        assert rerun.returncode == 0, rerun.stderr
        after = keysets.load(sealed.store_name)
        assert after is not None
        assert after.key_ids == (sealed.header().key_id,), f"run {run}"
        assert sealed.read(after) == plaintext

    elapsed = time.monotonic() - started
    print(
        f"rotate-key CLI through gnome-keyring: {runs} kills in "
        f"{elapsed:.1f} s; {two_keys} left two keys, {finished} had "
        "finished before the kill"
    )
