# jobtrail: `make run` serves, `make test` runs the whole suite. Both bootstrap .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench install dev tools screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $@ $(VENV)/.installed-dev $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# System tools of the workflow script and its lint: bash, curl, openssl (the script), shellcheck;
# and the browser the dashboard tests drive (Playwright never downloads one of its own).
SYSTEM_TOOLS := curl openssl shellcheck chromium
tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing$$missing"; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing; \
	fi

## run: serve on http://127.0.0.1:8080 (embedded PostgreSQL unless DATABASE_URL is set)
run: install
	$(BIN)/jobtrail serve

## test: the whole suite against a real PostgreSQL (TEST_DATABASE_URL or a throw-away embedded one)
test: dev tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## lint: ruff and mypy --strict; zizmor and actionlint on the workflows; shellcheck on their scripts
lint: dev tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/zizmor --offline --no-progress .github/workflows/
	$(BIN)/actionlint .github/workflows/*.yml
	shellcheck .github/scripts/*.sh

## screenshots: docs/dashboard.png and docs/timeline.png, taken by the browser tests
screenshots: dev tools
	JOBTRAIL_SCREENSHOTS=docs $(BIN)/python -m pytest -q tests/browser/test_dashboard.py -k screenshots

## bench: the benchmark suite (wrk installed with apt when missing); writes bench/results.json
bench: $(VENV)/.installed-bench
	@command -v wrk >/dev/null 2>&1 || { \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing wrk"; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq wrk; }
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
