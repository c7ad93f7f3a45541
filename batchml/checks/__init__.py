"""Checks: judging data and a model before they are used.

`expectations` turns the configured column rules into vectorised checks (a hard rule broken in training
data stops the fit); `validation` applies them at scoring, quarantining bad rows and flagging what the model
never saw, after `entity_ids` has found the ids repeated anywhere in the dataset version; `gates` and
`gate_checks` decide on a fresh model's held-out rows whether it may be promoted. May import: `data`,
`models`, `store`, `batchml.config` and the vocabulary. Scoring imports `validation`, so nothing here may
know about runs.
"""
