"""Registering a booster trained elsewhere (a notebook): its features, task and card, as `train` would record.

`batchml.register_model` is the verb; the card records what batchml could learn from the booster itself
(features and categorical levels, task, classes) and the same lineage and engine checks as a trained model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchml.config import ScoringConfig
from batchml.data import datasets
from batchml.models.features import Feature, check_bindable, renamed
from batchml.models.lineage import actor, code_lineage, code_version, git_state, package_versions
from batchml.models.registry import ModelVersion, Registry
from batchml.project import Project
from batchml.scoring.engine_choice import registered_checks
from batchml.store.eventlog import now

if TYPE_CHECKING:
    import lightgbm as lgb


def _booster_features(booster: lgb.Booster) -> list[Feature]:
    """Features of a booster trained elsewhere: pandas categoricals map strings to codes, others pass."""
    import lightgbm as lgb

    # The model text records the categorical indices; a reloaded booster parses them into params.
    indices = lgb.Booster(model_str=booster.model_to_string()).params.get("categorical_feature") or []
    if isinstance(indices, str):
        indices = [int(i) for i in indices.split(",") if i.strip()]
    categorical = {int(i) for i in indices}
    levels = iter(getattr(booster, "pandas_categorical", None) or [])
    features = []
    for index, name in enumerate(booster.feature_name()):
        categories = next(levels, None) if index in categorical else None
        if categories is None:  # numeric, or integer-coded categorical: the value is what the model reads
            features.append(Feature(name, "numeric", "unknown"))
        else:
            features.append(Feature(name, "categorical", "category", tuple(str(c) for c in categories)))
    return features


def _booster_task(booster: lgb.Booster) -> str:
    objective = str(booster.dump_model(num_iteration=1).get("objective", "regression"))
    if objective.startswith(("binary", "cross_entropy")):
        return "binary"
    return "multiclass" if objective.startswith(("multiclass", "softmax", "multiclassova")) else "regression"


def register_model(
    project: Project,
    name: str,
    booster: lgb.Booster,
    *,
    entity_id: str,
    dataset: str | None = None,
    target: str | None = None,
    classes: list[str] | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    feature_names: list[str] | None = None,
) -> ModelVersion:
    """Register a booster trained elsewhere (a notebook): features bind by its feature names.

    A booster trained on a bare matrix has positional names (`Column_0`, ...): `feature_names` gives the
    dataset column of each position. With `dataset`, every feature and the entity id must be a column of it.
    """
    task = _booster_task(booster)
    num_class = booster.num_model_per_iteration() if task == "multiclass" else 2
    labels = classes or ([] if task == "regression" else [str(i) for i in range(num_class)])
    version = datasets.get_version(project.storage, dataset) if dataset else None
    features = _booster_features(booster)
    if feature_names is not None:
        features = renamed(features, feature_names)
    if version is not None:
        check_bindable(features, entity_id, version.ref, version.columns)
    configured = project.config.models.get(name)
    scoring = configured.scoring if configured else ScoringConfig()
    checked = registered_checks(project.storage, name, booster, features, version, scoring)
    card = {
        "origin": "register_model",
        "task": task,
        "dataset_version": version.ref if version else None,
        "entity_id": entity_id,
        "target": target,
        "features": [f.to_dict() for f in features],
        "classes": labels,
        "positive_class": labels[1] if task == "binary" and len(labels) == 2 else None,
        "params": params if params is not None else dict(getattr(booster, "params", {}) or {}),
        "metrics": metrics or {},
        **checked,
        "num_trees": booster.num_trees(),
        "git": git_state(Path.cwd()),
        "packages": package_versions(),
        "code_version": code_version(),
        "code": code_lineage(),
        "created_at": now(),
        **actor(),
    }
    return Registry(project.storage).register(name, booster, card)
