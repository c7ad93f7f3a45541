"""Names in the serving file shared by the builder (`prediction_tables`) and the readers (`lookup`).

Its own module because readers must stay light: the builder imports polars and the scoring stack.
"""

from __future__ import annotations

#: The columns a run table stores per row, in table order (the run's constants are literals in the views).
STORED_COLUMNS = ("entity_id", "prediction", "predicted_class", "input_hash", "reasons", "flags")


def run_table_name(model: str, run_id: str) -> str:
    """The quoted name of the table holding run `run_id` of `model` (validated names: no quotes inside)."""
    return f'"run__{model}__{run_id}"'
