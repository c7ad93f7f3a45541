"""Monitoring: after the fact, whether what was published is still right, and how each number came about.

`drift` compares a run with its model's `drift_reference` (every training row, scored as a run is) using the
statistics of `drift_stats`; `reports` renders the Evidently report, which `report_render` makes judge as
`drift` does; `performance` joins delayed labels to the run that was published at label time; `alerts`
records breaches and debounced retrain triggers; `shadow` compares shadow runs with the served run;
`arm_compare` compares arms on labels (metrics, the difference from control with its 95% interval). `audit`
re-derives one published prediction from its receipt (explain) and one model version from its card
(reproduce): it reads runs and the publication log, so it
stands here, above scoring, not with the checks below it. May import: `scoring`, `checks`, `data`, `models`,
`store`, `batchml.config` and the vocabulary.
"""
