"""Rendering a run's Evidently report so that it tells the same story as `batchml drift`.

`batchml drift`'s verdict is the one alerts and retraining act on; the report shows it on top and asks
Evidently to judge the same columns, against the same reference rows (every row of the model's training
dataset version, sampled), with the same statistic where Evidently has it and the threshold batchml used:

    numeric feature, prediction   psi            batchml: psi + ks_binned (Evidently has no binned KS)
    categorical feature           jensenshannon  batchml: psi + js; Evidently's JS distance uses natural
                                                 logs, so its threshold is batchml's x sqrt(ln 2)

Evidently counts a column as drifted at value >= threshold and the dataset at share >= drift_share, batchml
above them; the drift share given to Evidently is the smallest share batchml calls drifted, so both count
the same. Evidently bins numeric PSI on both samples together (Sturges) where batchml uses the reference
deciles, and it judges a sample where batchml counts every row: near a threshold they can still differ,
and the banner says so.
"""

from __future__ import annotations

import html
import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from batchml.errors import DataError
from batchml.models.features import Feature
from batchml.monitoring.drift import PREDICTION, DriftResult

if TYPE_CHECKING:  # pandas (for Evidently) costs most of a second to import: only when rendering
    import pandas as pd

_ROOT_DIV = re.compile(r"<body>(\s*<div id=\"root_)")

#: Evidently's Jensen-Shannon distance (natural log) is batchml's (base 2) times this.
JS_NATURAL_LOG = math.sqrt(math.log(2))


@dataclass(frozen=True)
class EvidentlyDrift:
    """The Evidently drift settings matching one recorded batchml drift result."""

    features: list[str]  # the feature columns batchml judged, in the model's order
    methods: dict[str, str]  # column -> Evidently stattest
    thresholds: dict[str, float]  # column -> Evidently threshold
    least_drifted: int  # the fewest drifted features batchml calls the dataset drifted at
    drift_share: float  # Evidently's dataset drift share: that many of the features
    prediction: str | None  # the frame's prediction column, when batchml judged the prediction


def least_drifted(max_share: float, columns: int) -> int:
    """The fewest of `columns` drifted columns whose share is more than `max_share` (columns + 1: none is)."""
    return next((k for k in range(1, columns + 1) if k / columns > max_share), columns + 1)


def evidently_drift(result: DriftResult, features: list[Feature], prediction: str) -> EvidentlyDrift:
    """Per column the Evidently method and threshold matching `result` (thresholds as recorded in it)."""
    limits = {(r["feature"], r["statistic"]): float(r["threshold"]) for r in result.metrics}
    judged = [f for f in features if (f.name, "psi") in limits]
    methods, thresholds = {}, {}
    for feature in judged:
        if feature.kind == "numeric":
            methods[feature.name], thresholds[feature.name] = "psi", limits[(feature.name, "psi")]
        else:
            methods[feature.name] = "jensenshannon"
            thresholds[feature.name] = limits[(feature.name, "js")] * JS_NATURAL_LOG
    judges_prediction = (PREDICTION, "psi") in limits
    if judges_prediction:
        methods[prediction], thresholds[prediction] = "psi", limits[(PREDICTION, "psi")]
    least = least_drifted(float(result.summary["max_drifted_share"]), len(judged))
    # more columns than there are must drift: nothing may count as drifted, so keep Evidently's share above 1
    share = least / len(judged) if least <= len(judged) else math.nextafter(1.0, 2.0)
    names = [f.name for f in judged]
    return EvidentlyDrift(names, methods, thresholds, least, share, prediction if judges_prediction else None)


def _limits(result: DriftResult, statistic: str) -> str:
    """`0.2` or `0.2 (amount 0.3)`: the usual threshold of a statistic and the columns that override it."""
    values = {r["feature"]: r["threshold"] for r in result.metrics if r["statistic"] == statistic}
    if not values:
        return "-"
    usual = Counter(values.values()).most_common(1)[0][0]
    others = ", ".join(f"{name} {value:g}" for name, value in values.items() if value != usual)
    return f"{usual:g}" + (f" ({others})" if others else "")


def verdict_lines(result: DriftResult, drift: EvidentlyDrift) -> list[str]:
    """The banner's lines: batchml's verdict, which governs alerts, and how Evidently's view relates to it."""
    summary = result.summary
    drifted = ", ".join(summary["drifted_columns"]) or "none"
    prediction = {True: "yes", False: "no", None: "not judged"}[summary["prediction_drifted"]]
    reference = summary.get("reference") or {}
    columns = len(drift.features)
    return [
        f"Alerts and retraining act on batchml drift's verdict, not on Evidently's: {summary['verdict']} "
        f"({summary['drifted_features']} of {summary['features']} features drifted: {drifted}; "
        f"limit: more than {summary['max_drifted_share']:.0%}); prediction drifted: {prediction}.",
        f"batchml drift counts every row of the run against every row of {reference.get('dataset_version')} "
        f"({reference.get('rows') or 0:,} rows, scored by this model version): numeric columns by PSI "
        f"(threshold {_limits(result, 'psi')}) and binned KS ({_limits(result, 'ks_binned')}), categorical "
        f"ones by PSI and Jensen-Shannon distance, base 2 ({_limits(result, 'js')}).",
        f"Evidently below judges the same columns on the sampled rows with batchml's thresholds: numeric "
        f"columns and the prediction by PSI, categorical ones by Jensen-Shannon distance (natural log: "
        f"batchml's threshold x {JS_NATURAL_LOG:.4f}); dataset drift at {drift.least_drifted} of {columns} "
        f"columns (share {drift.drift_share:.4g}). It bins numeric PSI its own way and has no binned KS, "
        "so near a threshold its verdict can differ from batchml's.",
    ]


def drift_meta(summary: dict[str, Any], tests: EvidentlyDrift) -> dict[str, Any]:
    """What the report's drift judgement was matched to: batchml's verdict, which governs alerts."""
    return {
        "governs_alerts": "batchml drift",
        "verdict": summary["verdict"],
        "drifted_columns": summary["drifted_columns"],
        "prediction_drifted": summary["prediction_drifted"],
        "max_drifted_share": summary["max_drifted_share"],
        "evidently_methods": tests.methods,
        "evidently_thresholds": tests.thresholds,
        "evidently_drift_share": tests.drift_share,
    }


def _banner(title: str, lines: list[str]) -> str:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return (
        '<div id="batchml-report-note" style="font-family: sans-serif; margin: 16px; padding: 12px 16px; '
        'background: #f3f6fa; border-left: 4px solid #4d6fa8">'
        f'<h2 style="margin: 0 0 8px 0">{html.escape(title)}</h2><ul style="margin: 0">{items}</ul></div>'
    )


def render_html(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    title: str,
    lines: list[str],
    at: datetime,
    tests: EvidentlyDrift,
) -> tuple[str, str]:
    """Evidently's HTML (with the verdict and sampling note on top) and its JSON snapshot."""
    with warnings.catch_warnings():  # evidently's imports warn about numpy/litestar internals, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        from evidently import DataDefinition, Dataset, Report  # deferred: importing evidently takes seconds
        from evidently.metrics import ValueDrift
        from evidently.presets import DataDriftPreset, DataSummaryPreset

    import pandas as pd

    numeric = [c for c in reference.columns if pd.api.types.is_numeric_dtype(reference[c])]
    categorical = [c for c in reference.columns if c not in numeric]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    metrics: list[Any] = []
    if tests.features:  # none when no feature had a reference to compare with: batchml judged none either
        methods, thresholds = ({c: by[c] for c in tests.features} for by in (tests.methods, tests.thresholds))
        metrics.append(
            DataDriftPreset(
                columns=tests.features,
                per_column_method=methods,
                per_column_threshold=thresholds,
                drift_share=tests.drift_share,
            )
        )
    if tests.prediction is not None:
        metrics.append(
            ValueDrift(
                column=tests.prediction,
                method=tests.methods[tests.prediction],
                threshold=tests.thresholds[tests.prediction],
            )
        )
    report = Report(
        [*metrics, DataSummaryPreset()],
        metadata={
            "batchml_title": title,
            "batchml_sample_note": " ".join(lines),
            "batchml_governs_alerts": "batchml drift",
        },
        tags=["batchml"],
    )
    snapshot = report.run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
        timestamp=at.replace(tzinfo=None),
        name=title,
    )
    page = snapshot.get_html_str(as_iframe=False)
    banner = _banner(title, lines)
    page, found = _ROOT_DIV.subn(lambda m: f"<body>{banner}{m.group(1)}", page, count=1)
    if not found:
        raise DataError("Evidently's HTML has no <body> with its root <div>: cannot add the sampling note")
    return page, snapshot.dumps()
