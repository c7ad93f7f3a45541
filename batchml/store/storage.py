"""All I/O goes through one Storage facade, built from one URL.

`file://` (or a plain path) for local disk, `s3://bucket/prefix` in production, `memory://` in tests. Paths
inside the store are relative, '/'-separated and validated so that nothing can escape the root.

Commit protocol (DESIGN.md invariant 1): data files are written once under fresh names and stay invisible
until a manifest that lists them is created with put-if-absent (`create`). Locally that is a temp file
hard-linked into place (`os.link` fails if the target exists); on object stores it is `open(path, "xb")`.
Nothing relies on rename of objects.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchml.errors import ConflictError, IntegrityError, InvalidNameError, NotFoundError
from batchml.names import refuse_credentials_in_url
from batchml.redact import install_dependency_log_filters, redact_url
from batchml.store.records import seal, unseal

if TYPE_CHECKING:
    import fsspec
    import pyarrow.fs as pafs

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@=+-]{0,199}")  # fullmatch: no trailing newline
_CHUNK = 1 << 20
_LOCAL_PREFIXES = ("file://", "local://")


def _local_root(url: str) -> str | None:
    """The absolute path a local-disk URL (a plain path, `file://`, `local://`) names; None for any other."""
    if "::" in url or ("://" in url and not url.startswith(_LOCAL_PREFIXES)):
        return None
    path = url
    for prefix in _LOCAL_PREFIXES:
        path = path.removeprefix(prefix)
    return os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class FileEntry:
    """A stored file as a manifest records it: path relative to the store root, sha256 and size."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form stored in manifests."""
        return {"path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileEntry:
        """Parse the JSON form stored in manifests."""
        return cls(path=data["path"], sha256=data["sha256"], size=int(data["size"]))


def check_relpath(relpath: str) -> str:
    """Return `relpath` if every part is a safe name, else raise InvalidNameError naming it."""
    parts = relpath.split("/")
    if not relpath or any(not _PART.fullmatch(p) or p in {".", ".."} for p in parts):
        raise InvalidNameError("storage path", relpath, "'/'-separated parts of [A-Za-z0-9_.@=+-], no '..'")
    return relpath


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._raw.write(view)
        self.sha256.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._raw.flush()


class Storage:
    """A filesystem rooted at one URL, with the few operations batchml needs."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = refuse_credentials_in_url(url, "storage URL")
        self._options = dict(storage_options)
        self._fs: fsspec.AbstractFileSystem | None = None
        local = _local_root(url)
        self.is_local = local is not None
        # Local disk: fsspec is imported only when something writes or lists recursively. The reads every
        # command starts with (exists, read_bytes, list_dir) go to `os` directly, as fsspec's
        # LocalFileSystem would, so reading commands skip fsspec's import (~0.03 s of CPU each).
        self.root: str = (local or self._make_fs()).rstrip("/")

    def _make_fs(self) -> str:
        """Create the fsspec filesystem; return the root path in its terms."""
        import fsspec

        # No listing cache: other processes commit to the same store, and a cached listing of a folder
        # makes s3fs answer exists/open of a file committed since with "not found".
        fs, root = fsspec.core.url_to_fs(self.url, **{"use_listings_cache": False, **self._options})
        self._fs = fs
        install_dependency_log_filters()  # making the filesystem may have imported s3fs and its loggers
        return str(root)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem under this store (for local disk, created on first use)."""
        if self._fs is None:
            self._make_fs()
        assert self._fs is not None
        return self._fs

    def __repr__(self) -> str:
        return f"Storage({redact_url(self.url)!r})"

    def options_for(self, url: str) -> dict[str, Any]:
        """fsspec options for another URL: this store's (e.g. its S3 endpoint) if it has the same protocol."""
        if self.is_local:
            return {}
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        scheme = url.split("://", 1)[0] if "://" in url else "file"
        return dict(self._options) if scheme in protocols else {}

    # -- paths ---------------------------------------------------------------------------------------------
    def full_path(self, relpath: str) -> str:
        """Absolute path of `relpath` in the filesystem's own terms (no protocol)."""
        return f"{self.root}/{check_relpath(relpath)}"

    def uri(self, relpath: str) -> str:
        """A URI DuckDB or a person can use: a local path, or `s3://bucket/key`."""
        full = self.full_path(relpath)
        if self.is_local:
            return full
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{protocol}://{full.lstrip('/')}"

    @property
    def arrow_filesystem(self) -> pafs.FileSystem:
        """A pyarrow filesystem over this store (native for local disk, fsspec-backed otherwise)."""
        import pyarrow.fs as pafs  # here: pyarrow costs ~0.4 s to import, and most commands never need it

        if self.is_local:
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    # -- reading -------------------------------------------------------------------------------------------
    def exists(self, relpath: str) -> bool:
        """True if the file exists."""
        full = self.full_path(relpath)
        return os.path.exists(full) if self.is_local else bool(self.fs.exists(full))

    def read_bytes(self, relpath: str) -> bytes:
        """The whole content of a small file (manifests, models)."""
        full = self.full_path(relpath)
        try:
            if self.is_local:
                with open(full, "rb") as f:
                    return f.read()
            return bytes(self.fs.cat_file(full))
        except FileNotFoundError:
            raise NotFoundError("file", relpath) from None

    def read_json(self, relpath: str) -> dict[str, Any]:
        """A record `create_json` made, checked against its own hash (see `records`); IntegrityError naming
        the file if it is not valid JSON (truncated, damaged) or was edited since."""
        data = self.read_bytes(relpath)
        try:
            parsed = json.loads(data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            found = f"unparseable JSON ({exc})"
            raise IntegrityError(self.uri(relpath), "a valid JSON record", found) from None
        return unseal(parsed, self.uri(relpath))

    def list_dir(self, relpath: str) -> list[str]:
        """Sorted names (not paths) directly under `relpath`; empty if it does not exist."""
        full = self.full_path(relpath)
        if self.is_local and os.path.isdir(full):
            return sorted(os.listdir(full))
        if self.is_local and not os.path.lexists(full):
            return []
        self.fs.invalidate_cache(full)  # object-store listings are cached; a stale one hides new commits
        try:
            entries = self.fs.ls(full, detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def open_read(self, relpath: str) -> Any:
        """A binary file object for streaming reads."""
        return self.fs.open(self.full_path(relpath), "rb")

    def hash_file(self, relpath: str) -> FileEntry:
        """Hash a stored file, streaming it."""
        digest = hashlib.sha256()
        size = 0
        with self.open_read(relpath) as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return FileEntry(relpath, digest.hexdigest(), size)

    def verify(self, entry: FileEntry) -> None:
        """Raise IntegrityError naming the file if its content differs from what the manifest recorded."""
        if not self.exists(entry.path):
            raise IntegrityError(self.uri(entry.path), f"sha256 {entry.sha256}", "no file")
        actual = self.hash_file(entry.path)
        if (actual.sha256, actual.size) != (entry.sha256, entry.size):
            raise IntegrityError(
                self.uri(entry.path),
                f"sha256 {entry.sha256} ({entry.size} bytes)",
                f"sha256 {actual.sha256} ({actual.size} bytes)",
            )

    def verified_parquet(self, entries: list[FileEntry]) -> str:
        """`read_parquet([...])` over `entries`, each checked against its recorded hash first (DuckDB SQL)."""
        quoted = []
        for entry in entries:
            self.verify(entry)
            quoted.append("'" + self.uri(entry.path).replace("'", "''") + "'")
        return f"read_parquet([{', '.join(quoted)}])"

    # -- writing -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def open_write(self, relpath: str) -> Iterator[_HashingWriter]:
        """Write a new, not yet referenced file; the writer's `sha256`/`size` describe what was written."""
        full = self.full_path(relpath)
        self.fs.makedirs(full.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(full, "wb") as raw:
            writer = _HashingWriter(raw)
            yield writer

    def write_new(self, relpath: str, data: bytes) -> FileEntry:
        """Write bytes to a fresh (unreferenced) path and return its entry."""
        with self.open_write(relpath) as w:
            w.write(data)
        return FileEntry(relpath, w.sha256.hexdigest(), w.size)

    def create(self, relpath: str, data: bytes) -> None:
        """Atomically create `relpath` with `data` if it does not exist, else raise ConflictError.

        This is the commit point of every version: readers see the whole file or nothing.
        """
        full = self.full_path(relpath)
        parent = full.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.is_local:
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, full)
            except FileExistsError:
                raise ConflictError(f"{self.uri(relpath)} already exists") from None
            finally:
                os.unlink(tmp)
            return
        try:
            with self.fs.open(full, "xb") as f:
                f.write(data)
        except FileExistsError:
            raise ConflictError(f"{self.uri(relpath)} already exists") from None
        self.fs.invalidate_cache(parent)

    def create_json(self, relpath: str, obj: dict[str, Any]) -> None:
        """`create` with a JSON record sealed with its own hash (sorted keys: equal content, equal bytes)."""
        self.create(relpath, json.dumps(seal(obj), indent=1, sort_keys=True).encode())

    def delete(self, relpath: str) -> None:
        """Remove a file if present (used only for files no manifest references)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.full_path(relpath))
