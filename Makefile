# Two commands on a fresh machine: `make run` and `make test`. Each installs what it needs first: the runtime's
# and the development tooling's Python packages (.[dev,devstack]) here, then, where it can (root with apt-get),
# Debian's coturn (make run, make test) and Chromium (make test) in devstack/launcher.py, which otherwise says
# what to install and why.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint imports bench install clean manage cluster cluster-scale drills

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,devstack]'
	touch $(STAMP)

# checkov (the manifests' static security scan) pins old versions of packages the app uses, so it gets a venv
# of its own; tests/deploy finds it at $(CHECKOV).
CHECKOV := .venv-checkov/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install --quiet --upgrade pip
	.venv-checkov/bin/python -m pip install --quiet 'checkov>=3.2,<4'

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m devstack run

test: $(STAMP) $(CHECKOV)
	$(BIN)/python -m devstack test $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m devstack bench

# Against the stack `make run` started, e.g. make manage ARGS="audit_export --org northwind --out /tmp/audit"
manage: $(STAMP)
	$(BIN)/python -m devstack manage $(ARGS)

# The layering's contracts ([tool.importlinter] in pyproject.toml): which app may import which. .ci/run runs
# it before the tests.
imports: $(STAMP)
	$(BIN)/lint-imports --no-cache

lint: imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DJANGO_DEBUG=true $(BIN)/mypy .

clean:
	rm -rf $(VENV) .venv-checkov .data .bench *.egg-info

# A production-shaped cluster on loopback: nginx, WORKERS uvicorn workers (default 2), PgBouncer in transaction
# mode, PostgreSQL, Redis, OpenBao, coturn and the audit shipper (devstack/cluster.py), on CLUSTER_PORT (8080).
WORKERS ?= 2
CLUSTER_PORT ?= 8080
cluster: $(STAMP)
	$(BIN)/python -m devstack.cluster up --workers $(WORKERS) --port $(CLUSTER_PORT)

# The isolation suite again through PgBouncer (transaction mode), then the failure drills and the clinic-day
# load test (tests/drills), each against a loopback cluster of its own. .ci/run calls it after make test.
drills: $(STAMP)
	$(BIN)/python -m devstack drills $(PYTEST_ARGS)

# Change the running cluster's number of workers without restarting anything: make cluster-scale WORKERS=3
cluster-scale: $(STAMP)
	$(BIN)/python -m devstack.cluster scale $(WORKERS)
