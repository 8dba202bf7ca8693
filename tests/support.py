"""Helpers shared by the tests: an in-memory keyring, polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from secure_store.demo.keyring_backend import MemoryKeyring

__all__ = ["MemoryKeyring", "wait_for"]


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll ``condition`` until it is truthy; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    return condition()
