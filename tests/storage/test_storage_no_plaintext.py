"""No plaintext on disk at any moment of a persist, temp files included."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from storage_fakes import MemoryKeyring

from secure_store.storage import (
    KeyringKeysets,
    SealedFile,
    write_store,
)

SCENE = "Café/Einstellungen-geheim"
EVENT = "kühlschrank-öffnen"
CAMPAIGN = "kampagne-überall-7f3a"
PERSISTS = 100


def encodings(marker: str) -> list[bytes]:
    """Every way the marker could show up in a leaked file."""
    escaped = json.dumps(marker)[1:-1]  # ensure_ascii: Caf\u00e9...
    ascii_part = marker.encode("ascii", "ignore").split(b"-")[0]
    return [
        marker.encode("utf-8"),
        escaped.encode("ascii"),
        escaped.replace("/", "\\/").encode("ascii"),
        marker.encode("utf-16-le"),
        marker.encode("utf-16-be"),
        marker.encode("utf-8").hex().encode("ascii"),
        ascii_part,
        ascii_part.decode().encode("utf-16-le"),
    ]


LEAKS = [leak for m in (SCENE, EVENT, CAMPAIGN) for leak in encodings(m)]


def store_json(step: int) -> bytes:
    visits = [
        {"scene_path": [SCENE, f"{n}"], "times": step, "campaign": CAMPAIGN}
        for n in range(500)
    ]
    events = [
        {"category": EVENT, "action": "tap", "value": n} for n in range(500)
    ]
    document = {"visits": visits, "events": events}
    # Half the steps write raw UTF-8, half JSON-escaped ASCII.
    return json.dumps(document, ensure_ascii=step % 2 == 0).encode("utf-8")


def leaked(data: bytes) -> list[bytes]:
    return [leak for leak in LEAKS if leak in data]


@pytest.mark.parametrize("marker", [SCENE, EVENT, CAMPAIGN])
@pytest.mark.parametrize(("step", "form"), [(0, "escaped"), (1, "utf-8")])
def test_the_leak_check_finds_each_marker_in_the_plaintext(
    marker: str, step: int, form: str
) -> None:
    # Guards the test below against looking for the wrong thing.
    expected = (
        json.dumps(marker)[1:-1].encode()
        if form == "escaped"
        else marker.encode("utf-8")
    )

    assert expected in leaked(store_json(step))


def test_no_file_in_the_folder_ever_holds_plaintext_during_persists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keysets = KeyringKeysets(backend=MemoryKeyring())
    keysets.create("app")
    sealed = SealedFile(tmp_path / "store" / "app.sealed", "app")
    sealed.ensure_folder()
    found: list[tuple[str, list[bytes]]] = []
    renamed: list[str] = []
    looks = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal looks
        while not stop.is_set():
            for entry in os.scandir(sealed.folder):
                try:
                    with open(entry.path, "rb") as file:
                        data = file.read()
                except FileNotFoundError:
                    continue  # a temp file renamed under our eyes
                looks += 1
                if leaked(data):
                    found.append((entry.name, leaked(data)))

    real_replace = os.replace

    def checked_replace(source: str | Path, target: str | Path) -> None:
        # The last moment a temp file exists with all its content.
        data = Path(source).read_bytes()
        renamed.append(Path(source).name)
        if leaked(data):
            found.append((Path(source).name, leaked(data)))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", checked_replace)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for step in range(PERSISTS):
            write_store(sealed, keysets, store_json(step))
    finally:
        stop.set()
        watcher.join(10)

    assert found == []
    assert len(renamed) == PERSISTS
    assert all(name.endswith(".tmp") for name in renamed)
    assert looks > PERSISTS
