"""Writing a stream of record batches as Parquet part files that no manifest references yet."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from batchml.store.storage import FileEntry, Storage

Progress = Callable[[int], None]


def write_parquet_parts(
    storage: Storage,
    prefix: str,
    batches: Iterator[pa.RecordBatch],
    schema: pa.Schema,
    *,
    rows_per_file: int,
    row_group_rows: int = 131_072,
    dictionary_columns: list[str] | None = None,
    progress: Progress | None = None,
) -> list[FileEntry]:
    """Write `batches` to `<prefix>-<n>.parquet` files of at most `rows_per_file` rows, hashing as it goes.

    `dictionary_columns` limits dictionary encoding to those columns (default: every column). Naming the
    few-valued ones saves the writer from building a dictionary for unique values only to drop it.
    On any error every file written so far is removed, so a failed write leaves nothing behind.
    """
    use_dictionary: bool | list[str] = True if dictionary_columns is None else dictionary_columns
    entries: list[FileEntry] = []
    path = ""
    try:
        pending = next(batches, None)
        while pending is not None:
            path = f"{prefix}-{len(entries):05d}.parquet"
            rows = 0
            with (
                storage.open_write(path) as sink,
                pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=use_dictionary) as writer,
            ):
                while pending is not None and rows < rows_per_file:
                    writer.write_batch(pending, row_group_size=row_group_rows)
                    rows += pending.num_rows
                    if progress:
                        progress(pending.num_rows)
                    pending = next(batches, None)
            entries.append(FileEntry(path, sink.sha256.hexdigest(), sink.size))
    except BaseException:
        for stale in {path, *(e.path for e in entries)} - {""}:
            storage.delete(stale)
        raise
    return entries
