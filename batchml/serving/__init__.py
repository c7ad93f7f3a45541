"""Serving: the DuckDB file downstream apps read, derived from storage and swapped in atomically.

`readers` opens the current file read-only with capped connections and runs one statement (what apps load:
DuckDB and nothing heavy); `database` builds a new file and flips the pointer to it; `prediction_tables` holds
the current and staged run of each model (indexed) and the views over them; `history` opens readers of every
run ever published, from the run files in storage; `lookup` answers many ids in one query; `catalog` derives
the tables about everything else from the records in storage, monitoring's included, which is why this stage
is the top one; `staging` serves a candidate run beside the published one and compares them; `logstate` tells
which state of the event logs a file reflects, and `operations` carries out each mutating request once, on the
state its caller saw, then catches the file up; `gc` removes what no record references. `canary` ramps a
canary arm and `experiments` serves A/B variants beside the published run; `experiment_results` joins labels
to the arm that served each entity (it replays these logs, so it stands here, not in monitoring) and judges
them with `monitoring.arm_compare`. May import: every
stage below and `batchml.project`; above it stand only `batchml.api` and the CLI.
"""
