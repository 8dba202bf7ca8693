"""The README's Python quickstart runs as written, on real parts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import keyring
import platformdirs
import pytest
from support import MemoryKeyring

from secure_store import SecureStore
from secure_store.cleaninsights.clock import FrozenClock, use_clock
from secure_store.demo.socks import Pproxy
from secure_store.transport.envelope import GatewayKey, Suite

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart() -> str:
    text = README.read_text()
    section = text[text.index("## Quickstart: the app") :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None
    return found.group(1)


@pytest.fixture
def os_keyring(memory_keyring: MemoryKeyring) -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    keyring.set_keyring(memory_keyring)
    yield memory_keyring
    keyring.set_keyring(previous)


def test_app_quickstart_persists_what_it_measures(
    tmp_path: Path, os_keyring: MemoryKeyring, socks_proxy: Pproxy
) -> None:
    key_config = tmp_path / "gateway.keyconfig"
    key_config.write_text(
        GatewayKey.generate(Suite.X25519).key_config().to_base64()
    )
    code = quickstart()
    # Only the machine-specific values change: our proxy, our key config.
    code = code.replace("socks5h://127.0.0.1:9050", socks_proxy.url)
    code = code.replace("/etc/my-app/gateway.keyconfig", str(key_config))

    with use_clock(FrozenClock(datetime(2026, 6, 3, tzinfo=UTC))):
        exec(compile(code, str(README), "exec"), {})
        path = platformdirs.user_data_path("secure-store") / "my-app.sstore"
        reopened = SecureStore(name="my-app", path=path)

    assert [v.scene_path for v in reopened.visits] == [["Main", "Settings"]]
    assert [(e.category, e.value) for e in reopened.events] == [
        ("music", 12.5)
    ]
    reopened.close()
