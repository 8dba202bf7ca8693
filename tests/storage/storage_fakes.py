"""Keyring backends for unit tests of secure_store.storage (fakes only)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import keyring.errors
from keyring.backend import KeyringBackend
from keyring.backends import chainer


class MemoryKeyring(KeyringBackend):
    """Keeps entries in a dict: ``entries[(service, user)] = secret``."""

    priority = 1
    # Never picked by keyring.get_keyring(); only used when passed in.
    viable = False

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}
        self.calls: list[str] = []

    def get_password(self, service: str, username: str) -> str | None:
        self.calls.append("get")
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.calls.append("set")
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.calls.append("delete")
        try:
            del self.entries[(service, username)]
        except KeyError:
            raise keyring.errors.PasswordDeleteError(
                "No such password!"
            ) from None


class PlaintextKeyring(MemoryKeyring):
    """Named like keyrings.alt's plaintext file backend."""


class RaisingKeyring(MemoryKeyring):
    """Raises ``error`` from every call, like a locked Secret Service."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def get_password(self, service: str, username: str) -> str | None:
        raise self.error

    def set_password(self, service: str, username: str, password: str) -> None:
        raise self.error


class HangingKeyring(MemoryKeyring):
    """Blocks every call until ``release`` is set, like an unlock prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = 0

    def get_password(self, service: str, username: str) -> str | None:
        self.entered += 1
        self.release.wait()
        return None


class FileKeyring(KeyringBackend):
    """Entries in one JSON file, replaced atomically: shared by processes.

    The crash harness kills processes mid-call; like a Secret Service,
    each set is all or nothing.
    """

    priority = 1
    viable = False

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = Path(path)

    def _read(self) -> dict[str, str]:
        try:
            with open(self.path, encoding="utf-8") as file:
                entries: dict[str, str] = json.load(file)
                return entries
        except FileNotFoundError:
            return {}

    def _write(self, entries: dict[str, str]) -> None:
        temp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with open(temp, "w", encoding="utf-8") as file:
            json.dump(entries, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, self.path)

    def get_password(self, service: str, username: str) -> str | None:
        return self._read().get(f"{service}\n{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        entries = self._read()
        entries[f"{service}\n{username}"] = password
        self._write(entries)

    def delete_password(self, service: str, username: str) -> None:
        entries = self._read()
        if entries.pop(f"{service}\n{username}", None) is None:
            raise keyring.errors.PasswordDeleteError(
                "No such password!"
            ) from None
        self._write(entries)


class FakeChainer(chainer.ChainerBackend):
    """keyring's chainer over a fixed list of backends."""

    viable = False

    def __init__(self, backends: list[KeyringBackend]) -> None:
        super().__init__()
        self._chained = backends

    @property
    def backends(self) -> list[KeyringBackend]:
        return self._chained
