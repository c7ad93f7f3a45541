"""Input validation at scoring: quarantine rows that break hard rules, flag what the model never saw.

Per record batch, vectorised and in bounded memory:

- rows without an entity id (rule `null_id`), rows whose id repeats anywhere in the dataset version (rule
  `duplicate_id`, every copy; found before scoring by `entity_ids.find_duplicates`) and rows breaking a hard
  row rule (min/max/in/not_null) are split off into quarantine records (entity id, column, rule, offending
  value as text) and not scored; warn rules are only counted;
- null rates are tallied for `max_null_rate` (hard: the run fails when the limit is exceeded);
- scored rows get `flags`: `unseen:<col>` for a category training never saw, `other:<col>` for a training
  category beyond the model's `max_categories` (encoded as its one "other" category) and
  `out_of_range:<col>` for a number beyond the training profile's min/max.

The tallies become the run manifest's `summary`. A run fails (DataError, nothing committed) as soon as the
quarantined rows exceed `max_quarantine_share` of the dataset's rows, or a hard null rate is exceeded.
Quarantine records are buffered up to FLUSH_ROWS and written as Parquet parts that the manifest lists
under `quarantine_files`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchml.checks.entity_ids import DUPLICATE_ID, NULL_ID, DuplicateIds, null_ids
from batchml.checks.expectations import check_columns, null_count, row_rules
from batchml.config import Expectation
from batchml.errors import DataError
from batchml.models.features import Feature
from batchml.models.profiles import numeric_ranges
from batchml.store.parts import write_parquet_parts
from batchml.store.storage import FileEntry, Storage

FLUSH_ROWS = 100_000
MAX_UNSEEN_EXAMPLES = 5
QUARANTINE_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("run_id", pa.string()),
        ("entity_id", pa.string()),
        ("column_name", pa.string()),
        ("rule", pa.string()),
        ("value", pa.string()),
    ]
)
EMPTY_QUARANTINE = """CREATE TABLE quarantine (model VARCHAR, run_id VARCHAR, entity_id VARCHAR,
    column_name VARCHAR, rule VARCHAR, value VARCHAR)"""


def _text(values: pa.Array) -> pa.Array:
    try:
        return pc.cast(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in values.to_pylist()], pa.string())


class ScoringChecks:
    """Expectations and the training profile applied to each scoring batch, with the run's tallies."""

    def __init__(
        self,
        *,
        expectations: Mapping[str, Expectation],
        max_quarantine_share: float,
        features: list[Feature],
        profile: dict[str, Any],
        total_rows: int,
        model: str,
        run_id: str,
        skip: tuple[str, ...] = (),
    ) -> None:
        self.expectations = {c: e for c, e in expectations.items() if c not in skip}
        rules = row_rules(self.expectations)
        self.hard = [r for r in rules if r.severity == "hard"]
        self.warn = [r for r in rules if r.severity == "warn"]
        self.max_share = max_quarantine_share
        self.features = features
        self.ranges = numeric_ranges(profile)
        self.total = total_rows
        self.model, self.run_id = model, run_id
        self.duplicates = DuplicateIds.none()
        self.rows_in = self.quarantined = self.flagged = self.duplicate_ids = 0
        self.by_rule: Counter[tuple[str, str]] = Counter()
        self.warned: Counter[tuple[str, str]] = Counter()
        self.nulls: Counter[str] = Counter()
        self.unseen: Counter[str] = Counter()
        self.unseen_examples: dict[str, list[str]] = {}
        self.other: Counter[str] = Counter()
        self.out_of_range: Counter[str] = Counter()

    @property
    def columns(self) -> list[str]:
        """Input columns the expectations read."""
        return list(self.expectations)

    def check_schema(self, schema: pa.Schema, where: str) -> None:
        """SchemaError before any output when an expectation column is missing or unusable."""
        check_columns(schema, self.expectations, where)

    def quarantine_duplicates(self, duplicates: DuplicateIds) -> None:
        """Quarantine every copy of `duplicates` (ids repeated in the whole dataset version) as it streams by;
        DataError now, before any output, when their copies alone exceed max_quarantine_share."""
        self.duplicates, self.duplicate_ids = duplicates, len(duplicates.ids)
        total = max(self.total, 1)
        if duplicates.rows > self.max_share * total:
            raise DataError(
                f"scoring run {self.run_id} of {self.model} failed its input checks; nothing was committed: "
                f"{duplicates.rows:,} of {total:,} rows ({duplicates.rows / total:.2%}) share "
                f"{self.duplicate_ids:,} entity id(s) ({DUPLICATE_ID}), over max_quarantine_share "
                f"{self.max_share:g}; e.g. {duplicates.ids.slice(0, 3).to_pylist()}"
            )

    def split(self, batch: pa.RecordBatch, entity_id: str) -> tuple[pa.RecordBatch, pa.RecordBatch | None]:
        """The rows to score, and quarantine records for rows without a unique entity id or breaking a
        hard rule (None if none)."""
        n = batch.num_rows
        self.rows_in += n
        for column, exp in self.expectations.items():
            if exp.max_null_rate is not None:
                self.nulls[column] += null_count(batch.column(column))
        for rule in self.warn:
            self.warned[(rule.column, rule.label)] += int(rule.broken(batch.column(rule.column)).sum())
        ids = batch.column(entity_id)
        broken = [
            (entity_id, NULL_ID, null_ids(ids)),
            (entity_id, DUPLICATE_ID, self.duplicates.broken(ids)),
            *((r.column, r.label, r.broken(batch.column(r.column))) for r in self.hard),
        ]
        any_broken = np.zeros(n, dtype=bool)
        records = []
        for column, label, mask in broken:
            count = int(mask.sum())
            if not count:
                continue
            self.by_rule[(column, label)] += count
            any_broken |= mask
            where = pa.array(mask)
            records.append(
                pa.RecordBatch.from_arrays(
                    [
                        pa.repeat(pa.scalar(self.model), count),
                        pa.repeat(pa.scalar(self.run_id), count),
                        _text(pc.filter(ids, where)),
                        pa.repeat(pa.scalar(column), count),
                        pa.repeat(pa.scalar(label), count),
                        _text(pc.filter(batch.column(column), where)),
                    ],
                    schema=QUARANTINE_SCHEMA,
                )
            )
        self.quarantined += int(any_broken.sum())
        self.check_limits()
        if not records:
            return batch, None
        kept = batch.filter(pa.array(~any_broken))
        return kept, pa.Table.from_batches(records).combine_chunks().to_batches()[0]

    def flags(self, batch: pa.RecordBatch, matrix: np.ndarray) -> pa.Array:
        """Per scored row, `unseen:<col>` / `other:<col>` / `out_of_range:<col>` labels (empty when none)."""
        masks, labels = [], []
        for i, feature in enumerate(self.features):
            if feature.kind == "categorical":
                raw = batch.column(feature.name)
                mask = np.isnan(matrix[:, i]) & pc.is_valid(raw).to_numpy(zero_copy_only=False)
                count = int(mask.sum())
                if count:
                    self.unseen[feature.name] += count
                    self._remember_unseen(feature.name, raw, mask)
                masks.append(mask)
                labels.append(f"unseen:{feature.name}")
                if feature.other_code is not None:
                    other = matrix[:, i] == feature.other_code
                    self.other[feature.name] += int(other.sum())
                    masks.append(other)
                    labels.append(f"other:{feature.name}")
            elif feature.name in self.ranges:
                low, high = self.ranges[feature.name]
                with np.errstate(invalid="ignore"):
                    mask = (matrix[:, i] < low) | (matrix[:, i] > high)
                self.out_of_range[feature.name] += int(mask.sum())
                masks.append(mask)
                labels.append(f"out_of_range:{feature.name}")
        n = batch.num_rows
        if not masks:
            return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))
        stacked = np.column_stack(masks)
        per_row = stacked.sum(axis=1)
        self.flagged += int(np.count_nonzero(per_row))
        _, cols = np.nonzero(stacked)  # row-major: each row's flags in feature order
        offsets = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)
        values = pa.array(np.asarray(labels, dtype=object)[cols] if len(cols) else [], pa.string())
        return pa.ListArray.from_arrays(pa.array(offsets), values)

    def _remember_unseen(self, column: str, raw: pa.Array, mask: np.ndarray) -> None:
        seen = self.unseen_examples.setdefault(column, [])
        if len(seen) >= MAX_UNSEEN_EXAMPLES:
            return
        for value in pc.unique(_text(pc.filter(raw, pa.array(mask)))).to_pylist():
            if value not in seen and len(seen) < MAX_UNSEEN_EXAMPLES:
                seen.append(value)

    def problems(self) -> list[str]:
        """Why the run must fail (quarantined share or hard null rate over its limit); empty if fine."""
        total = max(self.total, self.rows_in, 1)
        partial = "at least " if self.rows_in < total else ""
        found = []
        if self.quarantined > self.max_share * total:
            top = ", ".join(f"{c} {r} ({n:,} rows)" for (c, r), n in self.by_rule.most_common(3))
            share = self.quarantined / total
            found.append(
                f"{partial}{self.quarantined:,} of {total:,} rows ({share:.2%}) are quarantined, "
                f"over max_quarantine_share {self.max_share:g}; top rules: {top}"
            )
        for column, exp in self.expectations.items():
            limit = exp.max_null_rate
            if exp.severity == "hard" and limit is not None and self.nulls[column] > limit * total:
                found.append(
                    f"column {column!r} has a null rate of {partial}{self.nulls[column] / total:.4g} "
                    f"({self.nulls[column]:,} of {total:,} rows), over max_null_rate {limit:g}"
                )
        return found

    def check_limits(self) -> None:
        """Raise DataError as soon as the run can no longer pass its limits."""
        found = self.problems()
        if found:
            raise DataError(
                f"scoring run {self.run_id} of {self.model} failed its input checks; nothing was committed: "
                + "; ".join(found)
            )

    def summary(self) -> dict[str, Any]:
        """The run summary for the manifest (counts only; JSON-ready)."""
        rows = self.rows_in or 1
        null_rates: dict[str, dict[str, Any]] = {
            c: {
                "nulls": self.nulls[c],
                "rate": self.nulls[c] / rows,
                "max": e.max_null_rate,
                "severity": e.severity,
            }
            for c, e in self.expectations.items()
            if e.max_null_rate is not None
        }
        warnings = [{"column": c, "rule": r, "rows": n} for (c, r), n in self.warned.items() if n]
        warnings += [
            {"column": c, "rule": f"max_null_rate {v['max']:g}", "rows": v["nulls"]}
            for c, v in null_rates.items()
            if v["severity"] == "warn" and v["rate"] > v["max"]
        ]
        return {
            "rows_in": self.rows_in,
            "scored": self.rows_in - self.quarantined,
            "quarantined": self.quarantined,
            "quarantined_share": self.quarantined / rows,
            "quarantine": [{"column": c, "rule": r, "rows": n} for (c, r), n in self.by_rule.most_common()],
            "duplicate_ids": self.duplicate_ids,
            "warnings": warnings,
            "null_rates": null_rates,
            "flagged": self.flagged,
            "unseen": {c: n for c, n in self.unseen.items() if n},
            "unseen_examples": self.unseen_examples,
            "other": {c: n for c, n in self.other.items() if n},
            "out_of_range": {c: n for c, n in self.out_of_range.items() if n},
        }


class QuarantineWriter:
    """Buffers quarantine records and writes them as Parquet parts; `delete` removes every part written."""

    def __init__(self, storage: Storage, prefix: str, flush_rows: int | None = None) -> None:
        self.storage, self.prefix, self.flush_rows = storage, prefix, flush_rows or FLUSH_ROWS
        self.files: list[FileEntry] = []
        self._pending: list[pa.RecordBatch] = []
        self._rows = 0

    def add(self, records: pa.RecordBatch) -> None:
        """Buffer `records`; write them out once FLUSH_ROWS are pending."""
        self._pending.append(records)
        self._rows += records.num_rows
        if self._rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write the pending records as one more part."""
        if not self._pending:
            return
        batches, self._pending, self._rows = self._pending, [], 0
        prefix = f"{self.prefix}-{len(self.files):04d}"
        self.files += write_parquet_parts(
            self.storage, prefix, iter(batches), QUARANTINE_SCHEMA, rows_per_file=1 << 62
        )

    def delete(self) -> None:
        """Remove every part written so far (on a failed run)."""
        self._pending, self._rows = [], 0
        for entry in self.files:
            self.storage.delete(entry.path)
        self.files = []


def quarantine_sql(uris: list[str]) -> str | None:
    """`SELECT` over quarantine Parquet files (quoted URIs), or None when there are none."""
    if not uris:
        return None
    columns = ", ".join(QUARANTINE_SCHEMA.names)
    return f"SELECT {columns} FROM read_parquet([{', '.join(uris)}])"


def describe_summary(summary: dict[str, Any]) -> list[str]:
    """A run summary as short lines for people (CLI output, flow artifacts); empty for old runs."""
    if not summary:
        return []
    rows_in, quarantined = summary.get("rows_in", 0), summary.get("quarantined", 0)
    rules = ", ".join(
        f"{q['column']} {q['rule']} ({q['rows']:,}"
        + (f" rows, {summary.get('duplicate_ids', 0):,} ids)" if q["rule"] == DUPLICATE_ID else ")")
        for q in summary.get("quarantine", [])
    )
    lines = [
        f"quarantined {quarantined:,} of {rows_in:,} rows ({summary.get('quarantined_share', 0.0):.2%})"
        + (f": {rules}" if rules else "")
    ]
    kinds = [
        f"{kind} " + ", ".join(f"{c} ({n:,})" for c, n in summary.get(kind, {}).items())
        for kind in ("unseen", "other", "out_of_range")
        if summary.get(kind)
    ]
    lines.append(
        f"flagged {summary.get('flagged', 0):,} scored rows" + (f": {'; '.join(kinds)}" if kinds else "")
    )
    if summary.get("warnings"):
        warned = ", ".join(f"{w['column']} {w['rule']} ({w['rows']:,})" for w in summary["warnings"])
        lines.append(f"warnings: {warned}")
    return lines
