"""The gateway loads its private keys from files and from a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_store.errors import GatewayError
from secure_store.gateway import load_keys
from secure_store.transport.envelope import GatewayKey, Suite


def write_key(path: Path, key_id: int, suite: Suite = Suite.X25519) -> Path:
    GatewayKey.generate(suite, key_id=key_id).save(path)
    return path


def test_keys_are_loaded_from_repeated_key_files(tmp_path: Path) -> None:
    first = write_key(tmp_path / "old.json", 1)
    second = write_key(tmp_path / "new.json", 2, Suite.PQ_HYBRID)

    keys = load_keys(key_files=[first, second])

    assert [k.key_id for k in keys] == [1, 2]


def test_every_json_file_of_the_key_folder_is_loaded(tmp_path: Path) -> None:
    write_key(tmp_path / "b.json", 2)
    write_key(tmp_path / "a.json", 1)
    (tmp_path / "README.txt").write_text("keys live here\n")

    keys = load_keys(key_dir=tmp_path)

    assert [k.key_id for k in keys] == [1, 2]


def test_hidden_files_in_the_key_folder_are_ignored(tmp_path: Path) -> None:
    write_key(tmp_path / "a.json", 1)
    (tmp_path / ".a.json.tmp").write_text("half written")
    (tmp_path / ".editor.json").write_text("{}")

    assert [k.key_id for k in load_keys(key_dir=tmp_path)] == [1]


def test_key_files_and_a_key_folder_combine(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    write_key(folder / "a.json", 1)
    extra = write_key(tmp_path / "extra.json", 9)

    keys = load_keys(key_files=[extra], key_dir=folder)

    assert sorted(k.key_id for k in keys) == [1, 9]


def test_two_files_with_one_key_id_are_refused_naming_both(
    tmp_path: Path,
) -> None:
    write_key(tmp_path / "a.json", 4)
    write_key(tmp_path / "b.json", 4)

    with pytest.raises(GatewayError, match=r"b\.json and .*a\.json"):
        load_keys(key_dir=tmp_path)


def test_a_file_that_is_not_a_key_is_refused_naming_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "public.json").write_text('{"key_configs": []}')

    with pytest.raises(GatewayError, match=r"public\.json"):
        load_keys(key_dir=tmp_path)


def test_a_missing_key_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(GatewayError, match=r"gone\.json"):
        load_keys(key_files=[tmp_path / "gone.json"])


def test_a_missing_key_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GatewayError, match="does not exist"):
        load_keys(key_dir=tmp_path / "nowhere")


def test_no_key_at_all_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GatewayError, match="no gateway key"):
        load_keys(key_dir=tmp_path)
