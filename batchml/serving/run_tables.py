"""Names in the serving file shared by the builder (`prediction_tables`) and the readers (`lookup`).

Its own module because readers must stay light: the builder imports polars and the scoring stack.
"""

from __future__ import annotations

#: The columns a run table stores per row, in table order (the run's constants are literals in the views).
STORED_COLUMNS = ("entity_id", "prediction", "predicted_class", "input_hash", "reasons", "flags")


def run_table_name(model: str, run_id: str) -> str:
    """The quoted name of the table holding run `run_id` of `model` (validated names: no quotes inside)."""
    return f'"run__{model}__{run_id}"'


#: Ids per query of a batch lookup, and the reader connections' `dynamic_or_filter_threshold`. DuckDB reads
#: `entity_id = ANY($ids)` through a run table's ART index only when the ids reach its table scan as a
#: filter, which a join does for at most `dynamic_or_filter_threshold` distinct keys (DuckDB's default: 50),
#: and when they match at most max(`index_scan_max_count`, `index_scan_percentage` x rows) rows (DuckDB's
#: default count is this one, 2,048, so a chunk always qualifies); otherwise it scans every row of the table.
LOOKUP_CHUNK = 2048
