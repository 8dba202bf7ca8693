"""What a user without a usable keyring sees (keyring's own choice, real).

Each case runs a fresh Python with a clean environment: no D-Bus session,
a private HOME (no keyring config), so keyring picks its backend exactly
as on a headless machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHILD = """
from secure_store.storage import KeyringKeysets
try:
    KeyringKeysets().load("s")
except Exception as exc:
    print(type(exc).__name__)
    print(exc)
else:
    print("no error")
"""


def load_without_a_keyring(home: Path, **extra_env: str) -> tuple[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "PYTHONPATH": str(PROJECT_ROOT),
        **extra_env,
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    error_type, _, message = done.stdout.partition("\n")
    return error_type, message.strip()


def test_no_d_bus_gives_keyring_unavailable_naming_the_fail_backend(
    tmp_path: Path,
) -> None:
    error_type, message = load_without_a_keyring(tmp_path)

    assert error_type == "KeyringUnavailableError"
    assert message == (
        "no usable keyring backend: found keyring.backends.fail.Keyring "
        "(priority 0); install and unlock a Secret Service (for example "
        "gnome-keyring) or the platform keychain, or choose a backend with "
        "PYTHON_KEYRING_BACKEND"
    )


def test_the_null_backend_chosen_by_environment_is_refused(
    tmp_path: Path,
) -> None:
    error_type, message = load_without_a_keyring(
        tmp_path, PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring"
    )

    assert error_type == "InsecureKeyringError"
    assert message.startswith(
        "refusing keyring backend keyring.backends.null.Keyring"
    )


@pytest.mark.parametrize(
    ("backend", "cause"),
    [
        (
            "keyring.backends.SecretService.Keyring",
            "DBUS_SESSION_BUS_ADDRESS is unset",
        ),
        ("no_such_module.Keyring", "No module named 'no_such_module'"),
    ],
)
def test_a_backend_that_cannot_start_names_python_keyring_backend(
    tmp_path: Path, backend: str, cause: str
) -> None:
    error_type, message = load_without_a_keyring(
        tmp_path, PYTHON_KEYRING_BACKEND=backend
    )

    assert error_type == "KeyringUnavailableError"
    assert cause in message
    assert "check PYTHON_KEYRING_BACKEND" in message
