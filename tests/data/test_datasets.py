"""Dataset versions: immutable, content-hashed, deduplicated, readable forever, with clear errors."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from batchml.data import datasets, sources
from batchml.errors import DataError, IntegrityError, InvalidNameError, NotFoundError
from batchml.store.storage import Storage


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path / "store"))


def stored_files(storage: Storage) -> list[str]:
    return sorted(str(p) for p in Path(storage.root).rglob("*") if p.is_file())


def test_snapshot_writes_manifest_with_schema_hashes_and_lineage(storage: Storage, loans_csv: Path) -> None:
    version = datasets.snapshot(storage, "loans", str(loans_csv), created_by="tester")
    assert version.rows == 4000 and not version.reused and version.parent is None
    assert "loan_id" in version.columns and version.created_by == "tester"
    assert version.summary["annual_income"]["nulls"] > 0
    for entry in version.files:
        storage.verify(entry)
    assert datasets.read_frame(storage, version).height == 4000


def test_same_content_is_no_new_version_and_no_new_bytes(
    storage: Storage, loans_csv: Path, tmp_path: Path
) -> None:
    first = datasets.snapshot(storage, "loans", str(loans_csv))
    before = stored_files(storage)
    copy = tmp_path / "elsewhere" / "copy.csv"
    copy.parent.mkdir()
    copy.write_bytes(loans_csv.read_bytes())
    again = datasets.snapshot(storage, "loans", str(copy))
    assert again.reused and again.version == first.version
    assert stored_files(storage) == before


def test_new_content_gets_new_version_with_parent_and_diff(storage: Storage, tmp_path: Path) -> None:
    pl.DataFrame({"id": [1, 2, 3], "x": [1.0, 2.0, 3.0]}).write_parquet(tmp_path / "a.parquet")
    pl.DataFrame({"id": [1, 2, 3, 4], "x": [1.0, 2.0, 9.0, 4.0], "y": ["a"] * 4}).write_parquet(
        tmp_path / "b.parquet"
    )
    a = datasets.snapshot(storage, "d", str(tmp_path / "a.parquet"))
    b = datasets.snapshot(storage, "d", str(tmp_path / "b.parquet"))
    assert b.parent == a.version
    assert datasets.get_version(storage, "d@latest").version == b.version
    assert datasets.get_version(storage, f"d@{a.version[:6]}").version == a.version
    diff = datasets.diff_versions(a, b)
    assert diff["rows"] == {"old": 3, "new": 4, "change": 1}
    assert diff["added_columns"] == ["y"] and diff["removed_columns"] == []
    assert diff["column_changes"]["x"]["max"] == {"old": 3.0, "new": 9.0}


def test_latest_is_the_most_recently_snapshotted_version(storage: Storage, tmp_path: Path) -> None:
    pl.DataFrame({"id": [1, 2], "x": [1.0, 2.0]}).write_parquet(tmp_path / "a.parquet")
    pl.DataFrame({"id": [1, 2], "x": [5.0, 6.0]}).write_parquet(tmp_path / "b.parquet")
    a = datasets.snapshot(storage, "d", str(tmp_path / "a.parquet"))
    b = datasets.snapshot(storage, "d", str(tmp_path / "b.parquet"))
    assert datasets.get_version(storage, "d@latest").version == b.version
    # Back to the first source: no new version, but it is what the user points at now.
    again = datasets.snapshot(storage, "d", str(tmp_path / "a.parquet"))
    assert again.reused and again.version == a.version
    assert datasets.get_version(storage, "d@latest").version == a.version
    assert [v.version for v in datasets.list_versions(storage, "d")] == [a.version, b.version]
    datasets.snapshot(storage, "d", str(tmp_path / "b.parquet"))
    assert datasets.get_version(storage, "d@latest").version == b.version


def test_folder_and_glob_sources(storage: Storage, tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        pl.DataFrame(
            {"id": [i * 10 + j for j in range(10)], "v": [float(j) for j in range(10)]}
        ).write_parquet(folder / f"part-{i}.parquet")
    from_folder = datasets.snapshot(storage, "parts", str(folder))
    from_glob = datasets.snapshot(storage, "parts", str(folder / "part-*.parquet"))
    assert from_folder.rows == 30 and from_glob.version == from_folder.version


def test_awkward_column_names_and_late_type_changes_survive(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "_CSV_BLOCK", 1 << 16)  # types are inferred from the first 64 KiB only
    rows = ["1,x,2"] * 50_000 + ["oops,y,3.5"]
    source = tmp_path / "awkward.csv"
    source.write_text('"customer id","Région ""FR""",amount €\n' + "\n".join(rows) + "\n")
    version = datasets.snapshot(storage, "awkward", str(source))
    assert version.columns == ["customer id", 'Région "FR"', "amount €"]
    types = [c["type"] for c in version.schema]
    assert types == ["string", "string", "double"]  # widened when 'oops' and 3.5 appeared late in the file
    assert version.rows == 50_001


def test_unknown_versions_and_names_list_what_exists(storage: Storage, loans_csv: Path) -> None:
    version = datasets.snapshot(storage, "loans", str(loans_csv))
    with pytest.raises(NotFoundError, match=version.version):
        datasets.get_version(storage, "loans@ffffffffffff")
    with pytest.raises(NotFoundError, match="available: loans"):
        datasets.get_version(storage, "lones@latest")


@pytest.mark.parametrize("name", ["../x", "Loans", "a/b", "", "x" * 65])
def test_invalid_names_are_rejected_before_anything_is_stored(
    storage: Storage, loans_csv: Path, name: str
) -> None:
    with pytest.raises(InvalidNameError, match=r"\[a-z\]\[a-z0-9_-\]") as info:
        datasets.snapshot(storage, name, str(loans_csv))
    assert repr(name) in str(info.value)
    assert stored_files(storage) == []


def test_empty_or_missing_sources_store_nothing(storage: Storage, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("a,b\n")
    with pytest.raises(DataError, match="no rows"):
        datasets.snapshot(storage, "empty", str(empty))
    pl.DataFrame({"a": []}, schema={"a": pl.Int64}).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="no rows"):
        datasets.snapshot(storage, "empty", str(tmp_path / "empty.parquet"))
    with pytest.raises(NotFoundError, match=r"nope\.csv"):
        datasets.snapshot(storage, "missing", str(tmp_path / "nope.csv"))
    assert stored_files(storage) == []


def test_tampered_data_is_refused_on_read(storage: Storage, loans_csv: Path) -> None:
    version = datasets.snapshot(storage, "loans", str(loans_csv))
    path = Path(storage.root) / version.files[0].path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=version.files[0].path):
        datasets.read_frame(storage, version)
