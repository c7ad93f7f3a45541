"""Streaming batch scoring into immutable prediction runs.

    runs/<model>/<run_id>/<attempt>-<n>.parquet    prediction files, invisible until the manifest lists them
    runs/<model>/manifests/<run_id>.json           the run manifest; creating it commits the run

The run id is a hash of the run's content key (model version and hash, dataset version, code version - a
content hash of batchml's source -, prediction engine, params), so scoring the same thing twice returns the
first run, and scoring it with changed code or another engine does not. The manifest's `telemetry` (see
`telemetry.py`) is not in the key: a reused run keeps the telemetry of the scoring that made it. Memory is
bounded by the batch size, not by the dataset: batches stream through the pipeline in `pipeline.py` a few
at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from batchml.checks.validation import ScoringChecks
from batchml.config import Expectation
from batchml.data.datasets import DatasetVersion, iter_batches
from batchml.errors import ConflictError, DataError, NotFoundError
from batchml.models.lineage import actor, code_lineage, code_version
from batchml.models.registry import ModelVersion
from batchml.names import check_name
from batchml.scoring.engines import LIGHTGBM, Engine, engine_version
from batchml.scoring.pipeline import (
    BATCH_ROWS,
    BINARY_THRESHOLD,
    Progress,
    ScoredParts,
    check_input,
    score_batches,
)
from batchml.scoring.reason_rows import ReasonPlan, ReasonRows
from batchml.scoring.run_checksum import files_checksum
from batchml.store.eventlog import now
from batchml.store.storage import FileEntry, Storage

if TYPE_CHECKING:
    import lightgbm as lgb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringOptions:
    """What the project config adds to scoring; part of the run's content key (it changes the output)."""

    #: Top-k features by |contribution|, with their signed contributions, stored per prediction; 0 = off.
    reason_codes: int = 0
    #: Which rows get them ("top", "flagged", "all") and, for "top", the share and the score threshold it
    #: gives (see `batchml.scoring.reason_rows`; `batchml.api.scoring_inputs` derives it from the model).
    reason_rows: ReasonRows = "top"
    reason_share: float = 0.005
    reason_threshold: float | None = None
    #: Column rules: rows breaking a hard one are quarantined, warn ones are counted.
    expectations: Mapping[str, Expectation] = field(default_factory=dict)
    #: The run fails (nothing committed) when more than this share of its rows is quarantined.
    max_quarantine_share: float = 0.01
    #: The engine that predicts (chosen by `batchml.scoring.engine_choice.choose`); named with its version
    #: in the run key, not in `params`. `engine_fallback`: why `auto` chose lightgbm (recorded, not keyed).
    engine: str = LIGHTGBM
    engine_fallback: str | None = None

    @property
    def reasons(self) -> ReasonPlan:
        """The reason codes plan of the run (checks the mode, and the threshold when it needs one)."""
        return ReasonPlan(self.reason_codes, self.reason_rows, self.reason_threshold)

    def key(self) -> dict[str, Any]:
        """The JSON form that enters the run key."""
        # The share applies to every run (null and duplicate entity ids are quarantined too), so it is in
        # every key: a run that passed a looser limit is not reused under a stricter one.
        key: dict[str, Any] = {
            "reason_codes": self.reason_codes,
            "max_quarantine_share": self.max_quarantine_share,
        }
        if self.reason_codes:  # with reasons off, which rows would get them changes nothing
            key["reason_rows"] = self.reason_rows
            if self.reason_rows == "top":
                key["reason_share"] = self.reason_share
                key["reason_threshold"] = self.reason_threshold
        if self.expectations:
            key["expectations"] = {c: e.to_dict() for c, e in sorted(self.expectations.items())}
        return key


@dataclass(frozen=True)
class PredictionRun:
    """A committed prediction run, as its manifest records it."""

    manifest: dict[str, Any]
    reused: bool = False

    @property
    def run_id(self) -> str:
        """The content-derived run id."""
        return str(self.manifest["run_id"])

    @property
    def model(self) -> str:
        """The model's name."""
        return str(self.manifest["model"])

    @property
    def rows(self) -> int:
        """How many predictions the run holds."""
        return int(self.manifest["rows"])

    @property
    def files(self) -> list[FileEntry]:
        """The run's Parquet files."""
        return [FileEntry.from_dict(f) for f in self.manifest["files"]]

    @property
    def quarantine_files(self) -> list[FileEntry]:
        """The run's quarantine Parquet files (rows that broke a hard expectation)."""
        return [FileEntry.from_dict(f) for f in self.manifest.get("quarantine_files", [])]

    @property
    def telemetry(self) -> dict[str, Any]:
        """Stage busy seconds, wall seconds, threads, rows/s and peak RSS of the scoring ({} for old runs)."""
        return dict(self.manifest.get("telemetry") or {})

    @property
    def summary(self) -> dict[str, Any]:
        """Rows in, scored, quarantined (by rule), warnings, unseen/out-of-range counts ({} for old runs)."""
        return dict(self.manifest.get("summary") or {})


def run_key(
    model: ModelVersion, dataset: DatasetVersion, code: str, options: ScoringOptions | None = None
) -> dict[str, Any]:
    """The content key of scoring `dataset` with `model` by `code`: equal keys mean equal work."""
    return {
        "model": model.name,
        "model_version": model.version,
        "model_sha256": model.model_file.sha256,
        "dataset_version": dataset.ref,
        "code_version": code,
        "engine": engine_version((options or ScoringOptions()).engine),
        "params": {"binary_threshold": BINARY_THRESHOLD, **(options or ScoringOptions()).key()},
    }


def run_id_of(key: dict[str, Any]) -> str:
    """The run id for a content key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _manifest_path(model: str, run_id: str) -> str:
    return f"runs/{model}/manifests/{run_id}.json"


def get_run(storage: Storage, model: str, run_id: str) -> PredictionRun:
    """A committed run of `model`; NotFoundError lists the model's runs."""
    path = _manifest_path(check_name("model", model), run_id)
    if not storage.exists(path):
        raise NotFoundError(
            f"prediction run of model {model!r}", run_id, [r.run_id for r in list_runs(storage, model)]
        )
    return PredictionRun(storage.read_json(path))


def list_runs(storage: Storage, model: str) -> list[PredictionRun]:
    """Committed runs of `model`, oldest first."""
    folder = f"runs/{check_name('model', model)}/manifests"
    runs = [
        PredictionRun(storage.read_json(f"{folder}/{n}"))
        for n in storage.list_dir(folder)
        if n.endswith(".json")
    ]
    return sorted(runs, key=lambda r: r.manifest["finished_at"])


def new_stamp(
    model: ModelVersion, dataset: DatasetVersion, key: dict[str, Any], scored_at: datetime
) -> dict[str, Any]:
    """The constant columns every row of the run carries."""
    return {
        "model": model.name,
        "model_version": model.version,
        "dataset_version": dataset.ref,
        "code_version": key["code_version"],
        "run_id": run_id_of(key),
        "scored_at": scored_at,
    }


def new_checks(
    model: ModelVersion, dataset: DatasetVersion, options: ScoringOptions, run_id: str
) -> ScoringChecks:
    """The input checks of one run (or one partition of it): expectations, training profile, limits."""
    return ScoringChecks(
        expectations=options.expectations,
        max_quarantine_share=options.max_quarantine_share,
        features=model.features,
        profile=model.card.get("profile") or {},
        total_rows=dataset.rows,
        model=model.name,
        run_id=run_id,
        skip=(str(model.card.get("target")),),  # labels are not needed to score
    )


def commit_run(
    storage: Storage,
    key: dict[str, Any],
    model: ModelVersion,
    parts: ScoredParts,
    summary: dict[str, Any],
    *,
    started_at: str,
    scored_at: str,
    **extra: Any,
) -> PredictionRun:
    """Create the run manifest that makes `parts` visible; if the same work was committed first, keep
    that run and remove `parts`."""
    run_id = run_id_of(key)
    manifest = {
        "kind": "prediction_run",
        "run_id": run_id,
        "key": key,
        **{k: key[k] for k in ("model", "model_version", "dataset_version", "code_version")},
        "entity_id_column": str(model.card["entity_id"]),
        "task": model.task,
        "rows": parts.rows,
        # what a copied serving table must match; computed while the files were written, when it was
        "content_checksum": parts.checksum or files_checksum(storage, parts.files),
        # a publish need not sort rows whose ids already ascend in file order (absent: not known)
        **({"entity_ids_ascending": parts.ids_ascending} if parts.ids_ascending is not None else {}),
        "files": [f.to_dict() for f in parts.files],
        "quarantine_files": [f.to_dict() for f in parts.quarantine_files],
        "summary": summary,
        "code": code_lineage(),
        **extra,
        "started_at": started_at,
        "finished_at": now(),
        "scored_at": scored_at,
        **actor(),
    }
    try:
        storage.create_json(_manifest_path(model.name, run_id), manifest)
    except ConflictError:  # a concurrent run of the same work won: keep theirs
        delete_parts(storage, parts)
        return PredictionRun(get_run(storage, model.name, run_id).manifest, reused=True)
    return PredictionRun(manifest)


def delete_parts(storage: Storage, parts: ScoredParts) -> None:
    """Remove parts that no manifest references (a failed or superseded run)."""
    for entry in parts.files + parts.quarantine_files:
        storage.delete(entry.path)


def check_engine(options: ScoringOptions, engine: Engine | None) -> None:
    """Refuse an engine other than the one the options (and so the run key) name."""
    name = engine.name if engine is not None else LIGHTGBM
    if name != options.engine:
        raise ValueError(f"engine {name!r} given, but the scoring options name {options.engine!r}")


def engine_facts(options: ScoringOptions) -> dict[str, Any]:
    """What the manifest records about the engine beyond the key: why `auto` fell back, if it did."""
    return {"engine_fallback": options.engine_fallback} if options.engine_fallback else {}


def no_rows_error(dataset: DatasetVersion, checks: ScoringChecks) -> DataError:
    """The error for a run that scored nothing."""
    broke = f": all {checks.rows_in:,} rows were quarantined" if checks.rows_in else ""
    return DataError(f"dataset {dataset.ref} has no rows to score{broke}")


def score(
    storage: Storage,
    model: ModelVersion,
    booster: lgb.Booster,
    dataset: DatasetVersion,
    *,
    options: ScoringOptions | None = None,
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> PredictionRun:
    """Score every row of `dataset` with `model` into a committed run (or return the existing one).

    `engine` predicts (default: the booster's own predict); it must be the engine `options` names.
    """
    options = options or ScoringOptions()
    check_engine(options, engine)
    key = run_key(model, dataset, code_version(), options)
    run_id = run_id_of(key)
    if storage.exists(_manifest_path(model.name, run_id)):
        log.info("run %s of %s already exists: nothing to do", run_id, model.ref)
        return PredictionRun(get_run(storage, model.name, run_id).manifest, reused=True)

    checks = new_checks(model, dataset, options, run_id)
    scoring = check_input(storage, model, dataset, dataset.files[0], checks)
    started = now()
    scored_at = datetime.now(UTC)
    parts = score_batches(
        storage,
        f"runs/{model.name}/{run_id}/{uuid.uuid4().hex[:8]}",
        iter_batches(storage, dataset, columns=scoring.columns, batch_size=BATCH_ROWS),
        model=model,
        booster=booster,
        scoring=scoring,
        checks=checks,
        stamp=new_stamp(model, dataset, key, scored_at),
        reasons=options.reasons,
        progress=progress,
        engine=engine,
    )
    if not parts.files:
        delete_parts(storage, parts)
        raise no_rows_error(dataset, checks)
    return commit_run(
        storage,
        key,
        model,
        parts,
        checks.summary(),
        started_at=started,
        scored_at=scored_at.isoformat(),
        telemetry=parts.telemetry,
        **engine_facts(options),
    )
