"""Comparing arms on labels: per-arm metrics, and a metric's difference from control with its 95% interval.

What A/B experiments (`experiment_results`) and a canary's labelled-performance breach both use. Each metric
is a mean of per-row values, so one rule gives every interval: a 0/1 value (outcome rate, accuracy) by the
two-proportion normal interval (unpooled), any other (log loss, |error|, the outcome) by Welch's t interval.
RMSE is reported per arm without an interval (it is not a mean of rows; compare `mae` instead).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Metrics an arm reports per task; the first is the default one an experiment decides on.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("outcome_rate", "accuracy", "log_loss"),
    "regression": ("mean_outcome", "mae", "rmse"),
    "multiclass": ("accuracy",),
}
LOWER_IS_BETTER = frozenset({"log_loss", "mae", "rmse"})
#: Metrics with a per-row value, hence an interval on their difference.
COMPARABLE = frozenset({"outcome_rate", "accuracy", "log_loss", "mean_outcome", "mae"})
PROPORTIONS = frozenset({"outcome_rate", "accuracy"})
LEVEL = 0.95
_EPS = 1e-15


def row_values(task: str, y: np.ndarray, prediction: np.ndarray, hits: np.ndarray) -> dict[str, np.ndarray]:
    """Per labelled row, the value each comparable metric averages. `y`: the encoded label (binary: 1 for
    the positive class); `hits`: 1.0 where the served decision matched the label."""
    if task == "binary":
        p = np.clip(prediction, _EPS, 1 - _EPS)
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        return {"outcome_rate": y, "accuracy": hits, "log_loss": loss}
    if task == "regression":
        return {"mean_outcome": y, "mae": np.abs(prediction - y), "rmse": (prediction - y) ** 2}
    return {"accuracy": hits}


def arm_metrics(values: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Each metric of one arm from its per-row values (`rmse` is the root of the mean squared error)."""
    out: dict[str, float | None] = {}
    for metric, v in values.items():
        mean = float(np.mean(v)) if len(v) else None
        out[metric] = math.sqrt(mean) if metric == "rmse" and mean is not None else mean
    return out


def difference(metric: str, control: np.ndarray, arm: np.ndarray) -> dict[str, float | None]:
    """`arm - control` of `metric`'s mean, with the 95% interval (None where there is none)."""
    from scipy import stats  # deferred: scipy costs ~0.3 s to import, only monitoring needs it

    empty: dict[str, float | None] = {"uplift": None, "ci_low": None, "ci_high": None}
    if metric not in COMPARABLE or len(control) < 2 or len(arm) < 2:
        return empty
    uplift = float(np.mean(arm) - np.mean(control))
    var_a, var_c = float(np.var(arm, ddof=1)), float(np.var(control, ddof=1))
    if metric in PROPORTIONS:  # two-proportion normal interval, unpooled
        pa, pc = float(np.mean(arm)), float(np.mean(control))
        se = math.sqrt(pa * (1 - pa) / len(arm) + pc * (1 - pc) / len(control))
        half = float(stats.norm.ppf(0.5 + LEVEL / 2)) * se
    else:  # Welch's t interval, Welch-Satterthwaite degrees of freedom
        sa, sc = var_a / len(arm), var_c / len(control)
        se = math.sqrt(sa + sc)
        if se == 0:
            return {"uplift": uplift, "ci_low": uplift, "ci_high": uplift}
        df = (sa + sc) ** 2 / (sa**2 / (len(arm) - 1) + sc**2 / (len(control) - 1))
        half = float(stats.t.ppf(0.5 + LEVEL / 2, df)) * se
    return {"uplift": uplift, "ci_low": uplift - half, "ci_high": uplift + half}


def verdict(diff: dict[str, float | None], n_control: int, n_arm: int, min_samples: int, goal: str) -> str:
    """`insufficient_data` (an arm below `min_samples`, or no interval), `better` / `worse` (the interval
    excludes 0, judged by `goal`: increase or decrease), else `no_difference`. Never a winner on too few."""
    low, high = diff["ci_low"], diff["ci_high"]
    if min(n_control, n_arm) < min_samples or low is None or high is None:
        return "insufficient_data"
    if low > 0 or high < 0:
        up = low > 0
        return "better" if up == (goal == "increase") else "worse"
    return "no_difference"


def default_goal(metric: str) -> str:
    """`decrease` for losses and errors, else `increase` (an outcome rate's goal is the user's to state)."""
    return "decrease" if metric in LOWER_IS_BETTER else "increase"


def compare_arms(
    task: str,
    arms: dict[str, dict[str, np.ndarray]],
    control: str,
    min_samples: int,
    goals: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (arm, metric): value, rows, and (for arms other than control) the control's value,
    uplift with its 95% interval and a verdict. `arms`: per arm, `row_values` of its labelled rows."""
    rows = []
    base = arms.get(control) or {m: np.array([]) for m in TASK_METRICS[task]}
    n_control = len(next(iter(base.values()), []))
    base_metrics = arm_metrics(base)
    for arm, values in arms.items():
        n = len(next(iter(values.values()), []))
        for metric, value in arm_metrics(values).items():
            row: dict[str, Any] = {"variant": arm, "metric": metric, "value": value, "rows": n}
            row |= {"control_value": None, "uplift": None, "ci_low": None, "ci_high": None, "verdict": None}
            if arm != control:
                diff = difference(metric, base[metric], values[metric])
                goal = (goals or {}).get(metric) or default_goal(metric)
                row |= {"control_value": base_metrics.get(metric), **diff}
                row["verdict"] = verdict(diff, n_control, n, min_samples, goal)
            rows.append(row)
    return rows
