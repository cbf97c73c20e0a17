# The two commands: `make run` serves the messenger, `make test` runs the tests.
# Each creates (or reuses) .venv and installs the project into it first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-topology cluster cluster-down lint bench bench-quick fuzz soak soak-quick chaos chaos-short clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/messenger run

test: $(STAMP)
	$(BIN)/python -m pytest -m "not topology"

# The API, service and storage tests without gunicorn, nginx, Chromium or slow
# cases: the quick check while editing (under a minute).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not system and not browser and not slow and not topology"

# Several machines on loopback (README "Running on several machines"): three
# PostgreSQL servers, a three-master Redis Cluster, two gunicorn hosts, the push
# worker and nginx. Returns once it serves and prints the URL; cluster-down stops it.
cluster: $(STAMP)
	$(BIN)/messenger cluster up --detach

cluster-down: $(STAMP)
	$(BIN)/messenger cluster down

# The topology tests: they start their own topology (as `make cluster` does) and
# stop it; a few minutes.
test-topology: $(STAMP)
	$(BIN)/python -m pytest -m topology -s -o timeout=300 tests/topology

lint: $(STAMP)
	$(BIN)/ruff check messenger tests wsgi.py gunicorn.conf.py
	$(BIN)/ruff format --check messenger tests wsgi.py gunicorn.conf.py
	$(BIN)/mypy

# ARGS: more options, e.g. make bench ARGS="--compare nchan" or ARGS="--profile".
ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m messenger.bench --json bench-results/bench.json --html bench-results/bench.html $(ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m messenger.bench --quick --json bench-results/bench-quick.json --html bench-results/bench-quick.html $(ARGS)

# Reliability runs that print their figures (messenger/bench/faults.py): `soak`
# holds 10,000 polls for 10 minutes (not in CI; CI runs soak-quick, about a
# minute); `chaos` kills a worker, the push worker, Redis and PostgreSQL under
# load (CI runs chaos-short).
soak: $(STAMP)
	$(BIN)/python -m messenger.bench.faults soak

soak-quick: $(STAMP)
	$(BIN)/python -m messenger.bench.faults soak --quick

chaos: $(STAMP)
	$(BIN)/python -m messenger.bench.faults chaos

chaos-short: $(STAMP)
	$(BIN)/python -m messenger.bench.faults chaos --short

# The schemathesis run of CI (tests/api/test_fuzz.py), with many more examples per
# operation: FUZZ_MAX_EXAMPLES=2000 make fuzz for a night's run.
FUZZ_MAX_EXAMPLES ?= 300
fuzz: $(STAMP)
	FUZZ_MAX_EXAMPLES=$(FUZZ_MAX_EXAMPLES) $(BIN)/python -m pytest tests/api/test_fuzz.py -s -o timeout=3600

clean:
	rm -rf $(VENV) build *.egg-info
