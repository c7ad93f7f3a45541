# The front door: `make demo` runs the whole pipeline on the sample data, `make test` runs the suite.
# Both create the virtualenv and install what they need first (uv for speed, pinned by constraints.txt):
# batchml with its `prefect` extra (the flows and their server), `dask` (scale-out), `dev` (the tools) and
# `engines` (compiled scoring engines: batchml runs without them; their tests then skip, saying what is missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean serve

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	$(PY) -m uv pip install --quiet --python $(PY) -c constraints.txt --compile-bytecode -e '.[prefect,dask,dev,engines]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m compileall -q batchml flows
	$(PY) -m flows.demo

# DuckDB 1.4 (the long-term-support release) and its CLI, in a virtualenv of their own: the tests open serving
# files with them (tests/serving/test_compat.py), offline, to show that clients older than ours read them.
# Order-only on .venv: reinstalling batchml does not rebuild it; --clear replaces a half-built one.
LTS_VENV := .venv-duckdb-lts
LTS_STAMP := $(LTS_VENV)/.installed-stamp

$(LTS_STAMP): | $(STAMP)
	$(PY) -m uv venv --quiet --clear --python $(PY) $(LTS_VENV)
	$(PY) -m uv pip install --quiet --python $(LTS_VENV)/bin/python duckdb==1.4.5 duckdb-cli==1.4.4.post2
	touch $(LTS_STAMP)

# Bytecode is compiled first: these machines may set PYTHONDONTWRITEBYTECODE, and then every process the
# tests start (CLI runs, crash drivers, workers) would compile batchml again. Two workers (pytest-xdist) share
# the cores: most slow tests wait on subprocesses and servers. `pytest -n 0` runs in one process.
test: $(STAMP) $(LTS_STAMP)
	$(PY) -m compileall -q batchml flows tests
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check batchml flows tests benchmarks deployments
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/score.py

# `make serve`: a local Prefect server on 127.0.0.1 (UI at http://127.0.0.1:$(PREFECT_PORT)) and every
# deployment in deployments/ served from this terminal against it; Ctrl-C stops both, the server last (`set -m`
# keeps Ctrl-C away from it). Its database and log live in .prefect/server/ (git-ignored; SERVE_HOME=DIR moves
# them). The server is told its own host and port: the UI asks /ui-settings where the API is, and would
# otherwise send the browser to port 4200. Flows open $BATCHML_CONFIG, else ./batchml.toml.
PREFECT_PORT ?= 4200
SERVE_HOME := $(CURDIR)/.prefect/server

serve: $(STAMP)
	mkdir -p $(SERVE_HOME)
	set -m; export PREFECT_HOME=$(SERVE_HOME) PREFECT_SERVER_ANALYTICS_ENABLED=false \
		PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT=$(PREFECT_PORT); \
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) >$(SERVE_HOME)/server.log 2>&1 & \
	server=$$!; trap 'kill $$server 2>/dev/null; wait $$server 2>/dev/null' EXIT; trap 'exit 130' INT TERM; \
	echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  (server log: $(SERVE_HOME)/server.log)"; \
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(PY) -m deployments.serve --wait 120

clean:
	rm -rf $(VENV) $(LTS_VENV) .prefect data/raw data/datasets data/models data/runs data/publications data/serving
