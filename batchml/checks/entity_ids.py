"""Entity ids at scoring: a run holds at most one prediction per entity, so repeated ids are found first.

Copies of an id can sit in different batches, files or partitions of a dataset version, so a batch alone
cannot tell. Before scoring, one pass over the id column of the whole version (nothing else is read) finds
every id that occurs more than once; the scoring stream then quarantines all of their copies (rule
`duplicate_id`), and rows without an id (rule `null_id`), wherever they are.

The pass keeps one 64-bit hash per row, not the ids: 8 bytes a row, and at most MAX_HASHES_PER_PASS hashes
at a time. A larger version is hashed in several passes, each keeping one residue class of the hashes, so
memory stays bounded whatever the row count. Equal hashes only nominate ids: a second read collects the ids
behind them and counts them exactly, so a hash collision never quarantines a row.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchml.data.datasets import DatasetVersion
from batchml.store.storage import Storage

DUPLICATE_ID = "duplicate_id"
NULL_ID = "null_id"
#: Hashes held in memory at once (8 bytes each): 128 MiB. Larger versions take ceil(rows / this) passes.
MAX_HASHES_PER_PASS = 16_000_000
_READ_ROWS = 131_072


@dataclass(frozen=True)
class DuplicateIds:
    """The ids that occur more than once in a dataset version, and how many rows carry them."""

    ids: pa.Array  # each repeated id once, in the id column's type
    rows: int  # every copy counted

    @classmethod
    def none(cls) -> DuplicateIds:
        """No repeated ids."""
        return cls(pa.array([], pa.string()), 0)

    def broken(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """True for each row of `ids` that carries a repeated id."""
        if not len(self.ids):
            return np.zeros(len(ids), dtype=bool)
        found = pc.is_in(_plain(ids), value_set=self.ids)
        return np.asarray(pc.fill_null(found, False).to_numpy(zero_copy_only=False), dtype=bool)


def null_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True for each row without an entity id."""
    if not ids.null_count:
        return np.zeros(len(ids), dtype=bool)
    return np.asarray(pc.is_null(ids).to_numpy(zero_copy_only=False), dtype=bool)


def _plain(ids: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    return pc.cast(ids, ids.type.value_type) if pa.types.is_dictionary(ids.type) else ids


def _id_batches(storage: Storage, dataset: DatasetVersion, column: str) -> Iterator[pa.Array]:
    """The id column of every file of `dataset`, batch by batch.

    Files are not hash-checked here (the scoring stream checks each before it scores from it, and fails
    the run); a file that cannot be read is, so that damage reads as an IntegrityError naming the file.
    """
    for entry in dataset.files:
        try:
            with storage.open_read(entry.path) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=_READ_ROWS, columns=[column]):
                    yield _plain(batch.column(0))
        except (pa.ArrowException, OSError):
            storage.verify(entry)
            raise


def _hashes(ids: pa.Array) -> np.ndarray:
    """A 64-bit hash per id (nulls get one too; callers drop them)."""
    return pl.Series(ids).hash(seed=0).to_numpy()


def _candidate_hashes(storage: Storage, dataset: DatasetVersion, column: str) -> np.ndarray:
    """Sorted hashes seen more than once among the non-null ids: a superset of the repeated ids' hashes."""
    passes = max(1, math.ceil(dataset.rows / MAX_HASHES_PER_PASS))
    found = []
    for residue in range(passes):
        held = np.empty(min(dataset.rows, MAX_HASHES_PER_PASS), dtype=np.uint64)
        n = 0
        for ids in _id_batches(storage, dataset, column):
            hashes = _hashes(ids)[~null_ids(ids)]
            if passes > 1:
                hashes = hashes[hashes % passes == residue]
            if n + len(hashes) > len(held):  # an unlucky residue class: grow rather than fail
                held = np.resize(held, max(2 * len(held), n + len(hashes)))
            held[n : n + len(hashes)] = hashes
            n += len(hashes)
        held = held[:n]
        held.sort()
        found.append(np.unique(held[1:][held[1:] == held[:-1]]))
        del held
    return np.sort(np.concatenate(found))


def find_duplicates(storage: Storage, dataset: DatasetVersion, column: str) -> DuplicateIds:
    """The ids of `column` that occur more than once anywhere in `dataset` (nulls are not ids)."""
    candidates = _candidate_hashes(storage, dataset, column)
    if not len(candidates):
        return DuplicateIds.none()
    nominated = []
    for ids in _id_batches(storage, dataset, column):
        hit = np.isin(_hashes(ids), candidates) & ~null_ids(ids)
        nominated.append(ids.filter(pa.array(hit)))
    counts = pc.value_counts(pa.concat_arrays(nominated))
    repeated = pc.greater(counts.field("counts"), 1)
    rows = pc.sum(counts.field("counts").filter(repeated)).as_py() or 0
    return DuplicateIds(counts.field("values").filter(repeated), int(rows))
