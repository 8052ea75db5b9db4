# Two commands on a fresh machine: `make run` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench install clean manage

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m config.devstack run

test: $(STAMP)
	$(BIN)/python -m config.devstack test $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m config.devstack bench

# Against the stack `make run` started, e.g. make manage ARGS="audit_export --org northwind --out /tmp/audit"
manage: $(STAMP)
	$(BIN)/python -m config.devstack manage $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DJANGO_DEBUG=true $(BIN)/mypy .

clean:
	rm -rf $(VENV) .data .bench *.egg-info
