"""Storage facade: put-if-absent commits, path safety, integrity checks (local disk and memory://)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from batchml.errors import ConflictError, IntegrityError, InvalidNameError
from batchml.storage import Storage


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return Storage(str(tmp_path / "store"))
    return Storage(f"memory://batchml-test-{uuid.uuid4().hex}")


def test_create_is_put_if_absent(storage: Storage) -> None:
    storage.create("a/manifest.json", b"first")
    with pytest.raises(ConflictError, match="already exists"):
        storage.create("a/manifest.json", b"second")
    assert storage.read_bytes("a/manifest.json") == b"first"
    assert storage.list_dir("a") == ["manifest.json"]  # no temp files left behind


@pytest.mark.parametrize("bad", ["../x", "a/../../etc/passwd", "/abs", "", "a//b", "a/.", "a b"])
def test_paths_cannot_escape_the_root(storage: Storage, bad: str) -> None:
    with pytest.raises(InvalidNameError, match="storage path") as info:
        storage.create(bad, b"x")
    assert repr(bad) in str(info.value)


def test_write_new_records_hash_and_size(storage: Storage) -> None:
    entry = storage.write_new("files/part.bin", b"hello world")
    assert entry.size == 11
    assert entry.sha256 == storage.hash_file("files/part.bin").sha256
    storage.verify(entry)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_verify_names_a_damaged_file(storage: Storage, damage: str) -> None:
    entry = storage.write_new("files/part.bin", b"0123456789" * 100)
    data = bytearray(storage.read_bytes(entry.path))
    storage.delete(entry.path)
    if damage == "flip":
        data[500] ^= 0x01
        storage.write_new(entry.path, bytes(data))
    elif damage == "truncate":
        storage.write_new(entry.path, bytes(data[:-1]))
    with pytest.raises(IntegrityError, match=r"part\.bin"):
        storage.verify(entry)


def test_listing_a_missing_folder_is_empty(storage: Storage) -> None:
    assert storage.list_dir("nothing/here") == []
