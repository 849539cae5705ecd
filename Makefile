# The verbs everyone uses, locally and in CI (.ci/run calls `make test`).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install: `make install` is a no-op until pyproject.toml changes.
STAMP := $(VENV)/.installed
LINT_PATHS := fleetrun tests bench examples
# Azurite (the Azure Blob emulator of the storage tests), installed from tools/azurite's lock file.
AZURITE_DIR := tools/azurite
AZURITE := $(AZURITE_DIR)/node_modules/.bin/azurite-blob
DIGITS := examples/digits
IRIS := examples/iris

.PHONY: help install tools demo iris test lint bench clean

help:
	@echo "make install  create .venv and install fleetrun with its dev and examples extras"
	@echo "make tools    install Azurite (npm) for the Azure storage tests, and the deploy checkers"
	@echo "make demo     score the scikit-learn digits with the embedded broker and check accuracy"
	@echo "make iris     score the iris table (CSV slices, Parquet output) and check it"
	@echo "make test     start RabbitMQ if needed, then run the test suite"
	@echo "make lint     ruff check, ruff format --check, mypy --strict"
	@echo "make bench    run the benchmarks"
	@echo "make clean    remove demo data, demo output and build artefacts"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,examples]'
	touch $@

# Azurite, and the checkers of deploy/ (systemd-analyze, cloud-init, shellcheck, curl for
# tests/integration/test_deploy.py: installed with apt-get under CI=true; elsewhere a warning,
# and those checks skip with the reason).
tools: $(AZURITE)
	scripts/ensure-deploy-tools

# Touched after a successful `npm ci`: a no-op until package.json or its lock file changes.
# Without npm the Azure tests skip locally; under CI=true a missing npm is an error.
$(AZURITE): $(AZURITE_DIR)/package.json $(AZURITE_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		echo "npm ci --prefix $(AZURITE_DIR)"; \
		npm ci --prefix $(AZURITE_DIR) --no-audit --no-fund --loglevel=error; \
		touch $@; \
	elif [ "$${CI:-}" = "true" ]; then \
		echo "make tools: npm is not installed: CI needs Node.js 20+ with npm for Azurite" >&2; \
		exit 1; \
	else \
		echo "make tools: warning: npm is not installed, so Azurite is not; the Azure storage" \
			"tests will be skipped (install Node.js 20+ with npm, then run make tools)" >&2; \
	fi

demo: install
	$(BIN)/python $(DIGITS)/make_data.py
	$(BIN)/fleetrun run $(DIGITS)/job.yaml
	$(BIN)/python $(DIGITS)/check_accuracy.py $(DIGITS)/out

iris: install
	$(BIN)/python $(IRIS)/make_data.py
	$(BIN)/fleetrun plan $(IRIS)/job.yaml
	$(BIN)/fleetrun run $(IRIS)/job.yaml
	$(BIN)/python $(IRIS)/check.py $(IRIS)/out

# Any non-zero pytest exit fails the target, including 5 (no tests collected).
test: install tools
	scripts/ensure-rabbitmq
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy --strict fleetrun

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(DIGITS)/data $(DIGITS)/out $(DIGITS)/labels.csv
	rm -rf $(IRIS)/data $(IRIS)/out
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
