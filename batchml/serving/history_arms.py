"""What history readers replay beside the published runs: the canary and A/B arms served at each time.

`predictions` serves an entity in a canary arm or an experiment variant from that arm's run. To answer "what
was served to X at T" a history reader needs the same choice at T, so at connect time it replays the
publication, alias, canary and experiment logs (`experiment_results.segments`, the replay experiment
results are judged by) into a TEMP table of the connection:

    served_segments   model, published_run_id, from_at, to_at (NULL: still standing), variant, run_id, salt,
                      bucket_from, bucket_to: one row per arm served beside `published_run_id` from `from_at`
                      until `to_at` (a variant whose run was not scored is served control: no row)

`prediction_at` and `batchml.lookup(..., at=T)` then pick, as `predictions` does, the row of the arm the
entity's bucket falls in when that arm's run scored it and the published run has the entity, else the
published run's row as `control`. A segment counts only beside the run the file's own `publications` log says
was published at T (`published_run_at`), so the replay never disagrees with the snapshot the reader opened.
The arms' runs are read from their files like the published runs (`served_history`); the logs are read
only for models with a canary or experiment log.
"""

from __future__ import annotations

from typing import Any

from batchml.scoring.runs import get_run
from batchml.serving import canary, experiment_results, experiments
from batchml.serving.canary import CONTROL
from batchml.serving.prediction_tables import literal, run_constants, stores_names_only
from batchml.store.storage import Storage

SEGMENTS_TABLE = """CREATE TEMP TABLE served_segments (model VARCHAR, published_run_id VARCHAR,
    from_at TIMESTAMPTZ, to_at TIMESTAMPTZ, variant VARCHAR, run_id VARCHAR, salt VARCHAR,
    bucket_from DOUBLE, bucket_to DOUBLE)"""
_STANDING = "from_at <= CAST({at} AS TIMESTAMPTZ) AND (to_at IS NULL OR CAST({at} AS TIMESTAMPTZ) < to_at)"
#: The arm (variant, run_id) served `entity` at `at_time` beside the published run then; none: control.
#: Bucket ranges of one segment do not overlap, so one row at most.
ARM_AT = f"""CREATE TEMP MACRO served_arm_at(model_name, entity, at_time) AS TABLE
    SELECT variant, run_id FROM served_segments
    WHERE model = model_name AND published_run_id = published_run_at(model_name, at_time)
        AND {_STANDING.format(at="at_time")}
        AND {canary.salted_bucket_sql("salt || ':'", "CAST(entity AS VARCHAR)")} >= bucket_from
        AND {canary.salted_bucket_sql("salt || ':'", "CAST(entity AS VARCHAR)")} < bucket_to"""
#: What was served for one entity at a time: its arm's row, else the published run's (see the module doc).
PREDICTION_AT = f"""CREATE TEMP MACRO prediction_at(model_name, entity, at_time) AS TABLE
    WITH control AS (
        SELECT * REPLACE (CAST({literal(CONTROL)} AS VARCHAR) AS variant) FROM prediction_history
        WHERE model = model_name AND run_id = published_run_at(model_name, at_time)
            AND entity_id = CAST(entity AS VARCHAR)),
    arm AS (
        SELECT * REPLACE (CAST((SELECT variant FROM served_arm_at(model_name, entity, at_time)) AS VARCHAR)
            AS variant) FROM served_history
        WHERE model = model_name AND run_id = (SELECT run_id FROM served_arm_at(model_name, entity, at_time))
            AND entity_id = CAST(entity AS VARCHAR) AND EXISTS (FROM control))
    FROM arm UNION ALL (FROM control WHERE NOT EXISTS (FROM arm))"""
#: The arms standing at $at beside published run $run_id.
ARMS_AT = f"""SELECT variant, run_id, salt, bucket_from, bucket_to FROM served_segments
    WHERE model = $model AND published_run_id = $run_id AND {_STANDING.format(at="$at")}
    ORDER BY bucket_from"""


def segment_rows(storage: Storage, models: list[str]) -> list[list[Any]]:
    """The rows of `served_segments` for `models`, replayed from their logs."""
    rows: list[list[Any]] = []
    for model in models:
        if not canary.events(storage, model) and not experiments.event_log(storage, model).read():
            continue  # no arm was ever served: the replay would find none
        replayed = experiment_results.segments(storage, model)
        ends = [s["at"] for s in replayed[1:]] + [None]
        for segment, to_at in zip(replayed, ends, strict=True):
            standing = [model, segment["published"], segment["at"], to_at]
            rows += [
                [*standing, variant, run_id, segment["salt"], low, high]
                for variant, run_id, low, high in segment["arms"]
                if run_id is not None and segment["published"] is not None
            ]
    return rows


def arm_runs(storage: Storage, segments: list[list[Any]], published: set[str]) -> list[dict[str, Any]]:
    """The runs of the arms in `segments` not in `published`, as `published_runs` rows (their files)."""
    found: dict[str, dict[str, Any]] = {}
    for model, _, _, _, _, run_id, *_ in segments:
        if run_id in published or run_id in found:
            continue
        run = get_run(storage, model, run_id)
        found[run_id] = {**run_constants(run), "rows": run.rows, "reasons_names_only": stores_names_only(run),
                         "files": [e.path for e in run.files]}  # fmt: skip
    return list(found.values())


def served_at_sql(run_id: str, arms: list[tuple[Any, ...]]) -> str:
    """The rows served at a time to the ids `$ids` of model `$model`: as `predictions` picks them, from
    published run `run_id` and the `arms` (variant, run_id, salt, bucket from, bucket to) standing then.
    Every run is named by a literal, so each part opens only its run's files."""
    ids = "entity_id IN (SELECT unnest(CAST($ids AS VARCHAR[])))"
    parts = [
        f"""control AS (SELECT * REPLACE (CAST({literal(CONTROL)} AS VARCHAR) AS variant)
        FROM prediction_history WHERE model = $model AND run_id = {literal(run_id)} AND {ids})"""
    ]
    for i, (variant, arm_run, salt, low, high) in enumerate(arms):
        bucket = canary.bucket_sql(str(salt))
        parts.append(f"""arm{i} AS (SELECT * REPLACE (CAST({literal(str(variant))} AS VARCHAR) AS variant)
            FROM served_history WHERE model = $model AND run_id = {literal(str(arm_run))}
            AND entity_id IN (SELECT entity_id FROM control) AND {bucket} >= {float(low)!r}
            AND {bucket} < {float(high)!r})""")
    selects = [f"SELECT * FROM arm{i}" for i in range(len(arms))]
    rest = "SELECT * FROM control"
    if selects:  # an entity whose arm's run has no row for it is served control
        rest += f" WHERE entity_id NOT IN (SELECT entity_id FROM ({' UNION ALL '.join(selects)}))"
    served = " UNION ALL ".join([*selects, rest])
    return f"WITH {', '.join(parts)} SELECT * FROM ({served}) ORDER BY entity_id"
