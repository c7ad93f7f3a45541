"""`run_compare`'s measures from the run files, in bounded memory at any row count: the same numbers.

For runs too large to hold in memory (`run_compare.IN_MEMORY_ROWS`). DuckDB, capped at `MEMORY_LIMIT` and
spilling to a temporary directory, does what needs every row at once: it sorts each run's predictions into a
temporary Parquet file and joins the two runs by entity id when their rows differ; the rest is scans and
Python streaming a row group at a time:

- PSI: the old run's quantile edges from its sorted values at the ranks `np.quantile` interpolates between
  (`stats.psi_bin_edges_sorted`), then both runs' rows per bin, counted in SQL against those edges.
- KS: both sorted files merged in step; the gap of the two empirical CDFs is evaluated at every distinct
  value with the same counts and divisions as `run_compare.ks_statistic`, so the same maximum.
- Top-k: the k-th highest value read from the sorted file; the ids above it, and the smallest ids among
  those equal to it (the only sort), as `run_compare.top_ids` chooses them; the overlap is a join.
- Flip rate and mean |delta|: row by row when both runs hold the same ids in the same order (runs from one
  read of one dataset version), checked batch by batch; otherwise the in-memory path's join, over the files.

NaN predictions (and NULL, which the in-memory path reads as NaN) are kept out of the sorted files and
counted: `np.sort` puts them last, where they change neither the quantile edges (a NaN makes PSI 0, as
`np.quantile` makes every edge NaN) nor the KS gap; they fall in PSI's last bin and rank as +inf in the top k.
Counts are exact; sums are compensated (DuckDB's `fsum`, `math.fsum` of per-batch sums), so means match the
in-memory ones (pairwise sums) to ~1e-15 relative, not always to the last bit.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchml.data.stats import psi_bin_edges_sorted, psi_from_counts
from batchml.scoring.runs import PredictionRun
from batchml.store.storage import FileEntry, Storage

#: DuckDB's cap per comparison (its sorts and joins spill beyond it). With what DuckDB holds beyond its cap
#: and Python's batches, a comparison adds 171-233 MiB to the process at 1M-30M rows per run, flat
#: (`benchmarks/compare.py`), under the ~250 MB the in-memory path may add.
MEMORY_LIMIT = "100MB"
BATCH_ROWS = 131_072
#: Entities both scored, flip rate of the predicted class, mean |difference| (the in-memory join path's SQL).
PER_ENTITY_SQL = (
    "SELECT count(*), avg(CAST(n.predicted_class IS DISTINCT FROM o.predicted_class AS DOUBLE)), "
    "avg(abs(n.prediction - o.prediction)) FROM n_run n JOIN o_run o USING (entity_id)"
)
#: The value `run_compare.top_ids` ranks by: the prediction, NaN (and NULL, read as NaN) as +inf.
_RANKED = "CASE WHEN isnan(prediction) IS NOT FALSE THEN 'inf'::DOUBLE ELSE prediction END"
_COLUMNS = ["entity_id", "prediction", "predicted_class"]


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Distribution:
    """One run's predictions as the distribution measures need them: rows, NaNs, the sorted non-NaN
    values (a temporary Parquet file) and the sum of those values."""

    rows: int
    nans: int
    sorted_path: Path
    total: float

    @property
    def mean(self) -> float:
        """The mean prediction (NaN if any is NaN, as `np.mean`)."""
        return math.nan if self.nans or not self.rows else self.total / self.rows


def _sorted_chunks(path: Path) -> Iterator[np.ndarray]:
    # pre_buffer=False here and below: pyarrow's pre-buffering keeps what it read of a file until the
    # iteration ends (the whole file by then), which would make memory grow with the run.
    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(
        batch_size=BATCH_ROWS, columns=["prediction"], use_threads=False
    ):
        if batch.num_rows:
            yield batch.column(0).to_numpy()


def _distinct(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sorted chunk as (distinct values, how many of each); -0.0 and 0.0 count as one, as they compare."""
    starts = np.concatenate(([0], np.flatnonzero(chunk[1:] != chunk[:-1]) + 1))
    return chunk[starts], np.diff(np.append(starts, len(chunk)))


class _Sorted:
    """A sorted stream as distinct values with counts, read a chunk at a time; `done` counts the values
    already passed."""

    def __init__(self, path: Path) -> None:
        self._chunks = _sorted_chunks(path)
        self.values, self.counts = np.empty(0), np.empty(0, np.int64)
        self.done = 0
        self.ended = False

    def read(self) -> None:
        """Append the next chunk (or mark the stream ended)."""
        chunk = next(self._chunks, None)
        if chunk is None:
            self.ended = True
            return
        values, counts = _distinct(chunk)
        if len(self.values) and len(values) and values[0] == self.values[-1]:  # one value across chunks
            self.counts[-1] += counts[0]
            values, counts = values[1:], counts[1:]
        self.values = np.concatenate([self.values, values])
        self.counts = np.concatenate([self.counts, counts])

    def at_or_below(self, points: np.ndarray) -> np.ndarray:
        """How many values are <= each point (points below the first value not yet read)."""
        cumulative = np.concatenate(([self.done], self.done + np.cumsum(self.counts)))
        return cumulative[np.searchsorted(self.values, points, side="right")]

    def drop_below(self, cut: float) -> None:
        """Forget the values below `cut` (counted in `done`)."""
        keep = int(np.searchsorted(self.values, cut, side="left"))
        self.done += int(self.counts[:keep].sum())
        self.values, self.counts = self.values[keep:], self.counts[keep:]


def ks_statistic_sorted(expected: Distribution, actual: Distribution) -> float:
    """`run_compare.ks_statistic` of two runs' predictions from their sorted files, one merge pass.

    Values below the smaller of the two buffers' last values are settled (every value still unread is at
    or above it), so the gap is taken there, those values dropped, and the buffer that ends at the cut read
    on. A buffer holds at most a chunk of distinct values plus one (a value repeated across chunks is one
    entry with its count), so memory stays bounded even when one value fills the run."""
    if not expected.rows or not actual.rows:
        return 0.0
    a, b = _Sorted(expected.sorted_path), _Sorted(actual.sorted_path)
    gap = 0.0
    while True:
        for stream in (a, b):
            while not stream.ended and not len(stream.values):
                stream.read()
        open_ends = [s.values[-1] for s in (a, b) if not s.ended]
        cut = min(open_ends) if open_ends else math.inf
        points = np.concatenate([a.values, b.values])
        points = points[points < cut] if open_ends else points
        if len(points):
            below_a = a.at_or_below(points) / expected.rows
            below_b = b.at_or_below(points) / actual.rows
            gap = max(gap, float(np.max(np.abs(below_a - below_b))))
        if not open_ends:
            return gap
        for stream in (a, b):
            stream.drop_below(cut)
            if not stream.ended and stream.values[-1] == cut:
                stream.read()


class RunFiles:
    """Two runs' files open for comparison: hash-checked, as DuckDB views `n_run` and `o_run`, with a
    DuckDB connection capped at `MEMORY_LIMIT` spilling into a temporary directory (a context manager)."""

    def __init__(self, storage: Storage, new: PredictionRun, old: PredictionRun) -> None:
        self.storage = storage
        self.new_files, self.old_files = new.files, old.files
        self._tmp = tempfile.TemporaryDirectory(prefix="batchml-compare-")
        self.tmp = Path(self._tmp.name)
        spill = self.tmp / "spill"
        self.con = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "temp_directory": str(spill)})
        try:
            self.con.execute("SET enable_progress_bar = false")  # a library prints nothing
            if not storage.is_local:
                self.con.register_filesystem(storage.fs)
            self.con.execute(f"CREATE VIEW n_run AS SELECT * FROM {storage.verified_parquet(new.files)}")
            self.con.execute(f"CREATE VIEW o_run AS SELECT * FROM {storage.verified_parquet(old.files)}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection and remove the temporary files."""
        self.con.close()
        self._tmp.cleanup()

    def __enter__(self) -> RunFiles:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _one(self, sql: str, parameters: list[Any] | None = None) -> tuple[Any, ...]:
        row = self.con.execute(sql, parameters).fetchone()
        assert row is not None  # an aggregate without GROUP BY always returns one row
        return row

    def distribution(self, view: str) -> Distribution:
        """`view`'s predictions sorted into a temporary file, with its rows, NaNs and sum (`fsum`:
        compensated, within ~1e-16 relative of the exact sum, as `np.mean`'s pairwise sum is)."""
        path = self.tmp / f"{view}_sorted.parquet"
        self.con.execute(
            f"COPY (SELECT prediction FROM {view} WHERE NOT isnan(prediction) ORDER BY prediction) "
            f"TO {_quoted(str(path))} (FORMAT parquet, ROW_GROUP_SIZE {BATCH_ROWS})"
        )
        rows, sortable, total = self._one(
            f"SELECT count(*), count(*) FILTER (WHERE NOT isnan(prediction)), "
            f"coalesce(fsum(prediction) FILTER (WHERE NOT isnan(prediction)), 0) FROM {view}"
        )
        return Distribution(int(rows), int(rows) - int(sortable), path, float(total))

    def psi(self, expected: Distribution, actual: Distribution) -> float:
        """`population_stability_index` of the two runs' predictions."""
        if expected.nans:  # np.quantile makes every edge NaN: one distinct edge, no bins
            return 0.0
        edges = psi_bin_edges_sorted(expected.rows, lambda ranks: _values_at(expected.sorted_path, ranks))
        if len(edges) < 2:
            return 0.0
        counts = [self._bin_counts(edges, view) for view in ("o_run", "n_run")]
        return psi_from_counts(counts[0], expected.rows, counts[1], actual.rows)

    def _bin_counts(self, edges: np.ndarray, view: str) -> np.ndarray:
        """`psi_bin_counts` in SQL: a value's bin is how many inner edges it is at or above (the edges bound
        as parameters, so exactly these doubles; NaN, and NULL read as NaN, is above every edge in DuckDB
        as past every edge in np.searchsorted)."""
        inner = [float(e) for e in edges[1:-1]]
        above = " + ".join(f"CAST(p >= ${i + 1} AS INTEGER)" for i in range(len(inner))) or "0"
        found = self.con.execute(
            f"SELECT {above} AS bin, count(*) FROM (SELECT coalesce(prediction, 'nan'::DOUBLE) AS p "
            f"FROM {view}) GROUP BY bin",
            inner,
        ).fetchall()
        counts = np.zeros(len(edges) - 1, np.int64)
        for index, count in found:
            counts[index] = count
        return counts

    def top_overlap(self, k: int, new: Distribution, old: Distribution) -> int:
        """How many of the new run's top `k` ids are among the old run's (ranked as `run_compare.top_ids`;
        ids of other types compare as text)."""
        tops = [self._top_ids(view, k, d) for view, d in (("n_run", new), ("o_run", old))]
        n_type, o_type = (self._id_type(v) for v in ("n_run", "o_run"))
        key = "entity_id" if n_type == o_type else "CAST(entity_id AS VARCHAR)"
        return int(
            self._one(
                f"SELECT count(*) FROM (SELECT {key} AS id FROM {tops[0]}) JOIN "
                f"(SELECT {key} AS id FROM {tops[1]}) USING (id)"
            )[0]
        )

    def _top_ids(self, view: str, k: int, run: Distribution) -> str:
        """The top `k` ids of `view` written to a temporary file; the SQL that reads it. The k-th highest
        value comes from the sorted file (NaN ranks as +inf, past every value), so the ids are those above
        it and the smallest ids of those equal to it: scans, and a sort of the ties only."""
        path = self.tmp / f"{view}_top.parquet"
        position = max(run.rows - k, 0)  # of the k-th highest in ascending order, NaN (as +inf) last
        if position >= run.rows - run.nans:
            kth = math.inf
        else:
            kth = float(_values_at(run.sorted_path, np.array([position]))[0])
        ranked = f"(SELECT entity_id, {_RANKED} AS r FROM {view})"
        above = int(self._one(f"SELECT count(*) FROM {ranked} WHERE r > $1", [kth])[0])
        self.con.execute(
            f"COPY (SELECT entity_id FROM {ranked} WHERE r > $1 UNION ALL "
            f"(SELECT entity_id FROM {ranked} WHERE r = $1 ORDER BY entity_id LIMIT {k - above})) "
            f"TO {_quoted(str(path))}",
            [kth],
        )
        return f"read_parquet({_quoted(str(path))})"

    def _id_type(self, view: str) -> str:
        return str(self._one(f"SELECT typeof(entity_id) FROM {view} LIMIT 1")[0]) if self._rows(view) else ""

    def _rows(self, view: str) -> int:
        return int(self._one(f"SELECT count(*) FROM {view}")[0])

    def per_entity(self) -> tuple[int, float | None, float | None]:
        """(entities both scored, flip rate of the predicted class, mean |difference|) over those
        entities: row by row if both runs hold the same ids in the same order, else joined by id."""
        aligned = self._aligned()
        if aligned is not None:
            return aligned
        row = self.con.execute(PER_ENTITY_SQL).fetchone()
        return row if row else (0, None, None)

    def _aligned(self) -> tuple[int, float, float] | None:
        """The per-entity measures row by row, or None as soon as the two runs' ids differ."""
        rows = self._rows("n_run")
        if (
            not rows
            or rows != self._rows("o_run")
            or _id_field(self.storage, self.new_files) != _id_field(self.storage, self.old_files)
        ):
            return None
        flips, sums = 0, []
        for new, old in _paired(
            _batches(self.storage, self.new_files), _batches(self.storage, self.old_files)
        ):
            if not new.column(0).equals(old.column(0)):
                return None
            n_class, o_class = new.column(2), old.column(2)
            both_null = pc.and_(pc.is_null(n_class), pc.is_null(o_class))
            distinct = pc.if_else(both_null, False, pc.fill_null(pc.not_equal(n_class, o_class), True))
            flips += int(pc.sum(distinct).as_py() or 0)
            delta = new.column(1).to_numpy(zero_copy_only=False) - old.column(1).to_numpy(
                zero_copy_only=False
            )
            sums.append(float(np.sum(np.abs(delta))))
        return rows, flips / rows, math.fsum(sums) / rows


def _values_at(path: Path, ranks: np.ndarray) -> np.ndarray:
    """The values at `ranks` (0-based, ascending order) of a sorted file, reading only their row groups."""
    parquet = pq.ParquetFile(path, pre_buffer=False)
    found = np.empty(len(ranks))
    start = 0
    for group in range(parquet.metadata.num_row_groups):
        stop = start + parquet.metadata.row_group(group).num_rows
        inside = (ranks >= start) & (ranks < stop)
        if inside.any():
            values = parquet.read_row_group(group, columns=["prediction"]).column(0).to_numpy()
            found[inside] = values[ranks[inside] - start]
        start = stop
    return found


def _id_field(storage: Storage, files: list[FileEntry]) -> pa.DataType:
    with storage.open_read(files[0].path) as f:
        return pq.ParquetFile(f).schema_arrow.field("entity_id").type


def _batches(storage: Storage, files: list[FileEntry]) -> Iterator[pa.RecordBatch]:
    for entry in files:
        with storage.open_read(entry.path) as f:
            yield from pq.ParquetFile(f, pre_buffer=False).iter_batches(
                batch_size=BATCH_ROWS, columns=_COLUMNS, use_threads=False
            )


def _paired(
    left: Iterator[pa.RecordBatch], right: Iterator[pa.RecordBatch]
) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
    """The rows of two streams of equal length in step: slices of equal length, whatever their batches."""
    a = b = None
    while True:
        while a is None or not len(a):
            a = next(left, None)
            if a is None:
                return
        while b is None or not len(b):
            b = next(right, None)
            if b is None:
                return
        size = min(len(a), len(b))
        yield a.slice(0, size), b.slice(0, size)
        a, b = a.slice(size), b.slice(size)
