"""Reading snapshot sources: a file, folder, glob or URL of Parquet or CSV, as a stream of record batches.

CSV type inference looks at the first block only, so a column that looks like integers early and holds text
later would fail half-way. We widen that column (int → float → string) and start over, a bounded number of
times, instead of asking users to declare types.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchml.errors import DataError, NotFoundError, SchemaError
from batchml.names import refuse_credentials_in_url

SourceFormat = Literal["csv", "parquet"]
_SUFFIXES: dict[str, SourceFormat] = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_CSV_BLOCK = 16 << 20
_CONVERSION = re.compile(r"In CSV column #(\d+): .*CSV conversion error to (\w+)")
_MAX_WIDENINGS = 64


@dataclass(frozen=True)
class Source:
    """Resolved source files (fsspec URLs or local paths) in a stable order, with their format."""

    files: tuple[str, ...]
    format: SourceFormat
    fs: fsspec.AbstractFileSystem

    def fingerprint(self) -> str:
        """sha256 over the files' contents (not their names): equal data gives an equal fingerprint."""
        outer = hashlib.sha256(self.format.encode())
        for path in self.files:
            inner = hashlib.sha256()
            with self.fs.open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    inner.update(chunk)
            outer.update(inner.digest())
        return outer.hexdigest()


def _format_of(path: str) -> SourceFormat | None:
    lower = path.lower()
    return next((fmt for suffix, fmt in _SUFFIXES.items() if lower.endswith(suffix)), None)


def resolve_source(
    location: str, file_format: SourceFormat | None = None, storage_options: dict[str, Any] | None = None
) -> Source:
    """Find the files behind `location` (file, folder, glob or URL) and their format."""
    refuse_credentials_in_url(location, "source")
    fs, path = fsspec.core.url_to_fs(location, **(storage_options or {}))
    if any(ch in path for ch in "*?["):
        paths = sorted(fs.glob(path))
    elif fs.isdir(path):
        paths = sorted(p for p in fs.find(path) if _format_of(p) and not p.rsplit("/", 1)[-1].startswith("."))
    elif fs.exists(path):
        paths = [path]
    else:
        raise NotFoundError("source", location)
    if not paths:
        raise NotFoundError("source files matching", location)
    formats = {file_format or _format_of(p) for p in paths}
    if None in formats or len(formats) != 1:
        raise DataError(
            f"cannot tell the format of source {location!r} (found {sorted(map(str, formats))}): "
            "use .csv or .parquet files, or pass the format explicitly"
        )
    return Source(files=tuple(paths), format=formats.pop(), fs=fs)  # type: ignore[arg-type]


def _csv_batches(source: Source, path: str, column_types: dict[str, pa.DataType]) -> Iterator[pa.RecordBatch]:
    convert = pacsv.ConvertOptions(column_types=column_types, strings_can_be_null=True)
    with source.fs.open(path, "rb", compression="infer") as f:
        reader = pacsv.open_csv(
            f, read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK), convert_options=convert
        )
        yield from reader


def _widen(schema: pa.Schema, error: pa.ArrowInvalid) -> tuple[str, pa.DataType] | None:
    match = _CONVERSION.search(str(error))
    if not match:
        return None
    name = schema.names[int(match.group(1))]
    current = schema.field(name).type
    wider = pa.float64() if pa.types.is_integer(current) else pa.string()
    return (name, wider) if wider != current else None


def _csv_schema_and_batches(source: Source) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Find column types that hold for every block of every file, then stream with them."""
    column_types: dict[str, pa.DataType] = {}
    for _ in range(_MAX_WIDENINGS):
        schema: pa.Schema | None = None
        try:
            for path in source.files:
                for batch in _csv_batches(source, path, column_types):
                    schema = schema or batch.schema
                    if batch.schema != schema:
                        raise SchemaError(
                            f"CSV file {path!r} has columns {batch.schema.names}, not {schema.names}"
                        )
            if schema is None:
                raise DataError(f"source {source.files[0]!r} has no rows")
            break
        except pa.ArrowInvalid as exc:
            widened = _widen(schema, exc) if schema is not None else None
            if widened is None:
                raise DataError(f"cannot parse CSV {source.files[0]!r}: {exc}") from None
            column_types[widened[0]] = widened[1]
    else:
        raise DataError(f"cannot settle column types of CSV {source.files[0]!r}")
    final_types = dict(column_types)
    return schema, (b for p in source.files for b in _csv_batches(source, p, final_types))


def _parquet_schema_and_batches(
    source: Source, batch_size: int
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    schemas = []
    for path in source.files:
        with source.fs.open(path, "rb") as f:
            schemas.append(pq.read_schema(f))
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(f"Parquet files of the source do not share a schema: {exc}") from None

    def batches() -> Iterator[pa.RecordBatch]:
        for path in source.files:
            with source.fs.open(path, "rb") as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
                    table = pa.Table.from_batches([batch])
                    for name in schema.names:  # files may lack columns others have
                        if name not in table.column_names:
                            table = table.append_column(name, pa.nulls(len(table), schema.field(name).type))
                    yield from table.select(schema.names).cast(schema).to_batches()

    return schema, batches()


def read_source(source: Source, batch_size: int = 131_072) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The unified schema of the source and a stream of its record batches."""
    schema, batches = (
        _csv_schema_and_batches(source)
        if source.format == "csv"
        else _parquet_schema_and_batches(source, batch_size)
    )
    duplicated = sorted({n for n in schema.names if schema.names.count(n) > 1})
    if duplicated:
        raise SchemaError(f"source has duplicated column names {duplicated}: each column needs its own name")
    return schema, batches
