# jobtrail: `make run` serves, `make test` runs the whole suite. Both bootstrap .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench install dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

## run: serve on http://127.0.0.1:8080 (embedded PostgreSQL unless DATABASE_URL is set)
run: install
	$(BIN)/jobtrail serve

## test: the whole suite against a real PostgreSQL (TEST_DATABASE_URL or a throw-away embedded one)
test: dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## lint: ruff and mypy --strict
lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## bench: the benchmark suite; writes bench/results.json
bench: dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
