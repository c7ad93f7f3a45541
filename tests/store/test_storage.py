"""Storage facade: put-if-absent commits, path safety, integrity checks (local disk and memory://)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batchml.errors import ConflictError, IntegrityError, InvalidNameError
from batchml.store.storage import Storage


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


def test_records_carry_their_own_hash(storage: Storage) -> None:
    """What create_json stores reads back as written; any edit to it, even valid JSON, fails its hash."""
    record = {"rows": 3, "at": datetime(2026, 1, 2, tzinfo=UTC), "files": [{"path": "a", "size": 1}]}
    storage.create_json("m/run.json", record)
    assert storage.read_json("m/run.json") == {**record, "at": "2026-01-02 00:00:00+00:00"}
    stored = json.loads(storage.read_bytes("m/run.json"))
    assert set(stored) == {*record, "record_sha256"}
    stored["rows"] = 4
    storage.create("m/edited.json", json.dumps(stored).encode())
    with pytest.raises(IntegrityError, match=r"m/edited\.json: expected record_sha256 [0-9a-f]{64}, found"):
        storage.read_json("m/edited.json")
    with pytest.raises(TypeError, match="record_sha256"):
        storage.create_json("m/twice.json", stored)  # a record is sealed once, by storage
