"""The `secure-store` command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from support import MemoryKeyring

from secure_store import CleanInsights, SecureStore
from secure_store.cleaninsights.clock import FrozenClock
from secure_store.cli import main
from secure_store.storage.keys import KEYRING_SERVICE
from secure_store.transport.envelope import GatewayKey, KeyConfig


@pytest.fixture
def os_keyring(memory_keyring: MemoryKeyring) -> Iterator[MemoryKeyring]:
    """Make the in-memory keyring the one ``keyring`` picks by default."""
    previous = keyring.get_keyring()
    keyring.set_keyring(memory_keyring)
    yield memory_keyring
    keyring.set_keyring(previous)


def test_keygen_writes_a_private_key_and_prints_its_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "gw.key"

    status = main(
        ["gateway", "keygen", "--suite", "x25519", "--out", str(key_file)]
    )

    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert status == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    config = KeyConfig.from_base64(printed)
    assert config.key_id == GatewayKey.load(key_file).key_id


def test_keygen_refuses_to_overwrite_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "gw.key"
    key_file.write_text("precious")

    status = main(["gateway", "keygen", "--out", str(key_file)])

    assert status == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert key_file.read_text() == "precious"


def test_key_config_prints_what_keygen_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "gw.key"
    main(["gateway", "keygen", "--out", str(key_file)])
    from_keygen = capsys.readouterr().out.strip().splitlines()[-1]

    main(["gateway", "key-config", "--key-file", str(key_file)])

    assert capsys.readouterr().out.strip() == from_keygen


def test_rotate_key_reseals_under_a_new_key_and_keeps_the_data(
    tmp_path: Path,
    os_keyring: MemoryKeyring,
    clock: FrozenClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "app.sstore"
    store = SecureStore(name="app", path=path)
    ci = CleanInsights(
        {
            "server": "https://gw.example.onion/",
            "siteId": 1,
            "campaigns": {
                "c": {
                    "start": "2024-01-01T00:00:00Z",
                    "end": "2024-12-31T00:00:00Z",
                    "aggregationPeriodLength": 7,
                }
            },
        },
        store,
    )
    ci.grant_campaign("c")
    ci.measure_visit(["Main"], "c")
    ci.persist()
    store.close()
    before = json.loads(os_keyring.get_password(KEYRING_SERVICE, "app") or "")
    sealed_before = path.read_bytes()

    status = main(["rotate-key", "--store", str(path)])

    output = capsys.readouterr().out
    after = json.loads(os_keyring.get_password(KEYRING_SERVICE, "app") or "")
    assert status == 0
    assert after != before
    assert path.read_bytes() != sealed_before
    for secret in after.get("keys", {}).values():
        assert str(secret) not in output
    reopened = SecureStore(name="app", path=path)
    assert [v.times for v in reopened.visits] == [1]
    reopened.close()


def test_unknown_listen_address_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status = main(
        [
            "gateway",
            "serve",
            "--listen",
            "nonsense",
            "--upstream",
            "http://127.0.0.1:9/",
            "--key-dir",
            str(tmp_path),
        ]
    )

    assert status == 1
    assert "--listen must be HOST:PORT" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["rotate-key", "inspect"])
@pytest.mark.parametrize("store", ["", "."])
def test_store_that_is_no_file_is_a_clear_error(
    command: str, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main([command, "--store", store])

    assert status == 1
    assert "--store must name a store file" in capsys.readouterr().err


def test_rotate_key_on_a_missing_file_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["rotate-key", "--store", str(tmp_path / "new" / "a.sstore")]
    )

    assert status == 1
    assert "no store file at" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "home"]


@pytest.mark.parametrize(
    "option", [["--threads", "0"], ["--upstream-timeout", "nan"]]
)
def test_serve_refuses_useless_settings(
    option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["gateway", "serve", "--upstream", "http://127.0.0.1:9/", *option]

    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    assert exit_info.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_rotate_key_on_a_file_that_is_no_store_says_so(
    tmp_path: Path,
    os_keyring: MemoryKeyring,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "random.sstore"
    path.write_bytes(b"\x00not a store at all, just some bytes\xff" * 4)

    status = main(["rotate-key", "--store", str(path)])

    assert status == 1
    assert "not a secure-store sealed file" in capsys.readouterr().err
    assert os_keyring.entries == {}


def test_refused_keyring_names_the_command_line_flag(
    tmp_path: Path,
    memory_keyring: MemoryKeyring,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from keyring.backends import null

    path = tmp_path / "a.sstore"
    store = SecureStore(path=path, keyring_backend=memory_keyring)
    store.persist(False, lambda error: None)
    store.close()
    previous = keyring.get_keyring()
    keyring.set_keyring(null.Keyring())
    try:
        status = main(["rotate-key", "--store", str(path)])
    finally:
        keyring.set_keyring(previous)

    assert status == 1
    assert "--allow-insecure-keyring" in capsys.readouterr().err
