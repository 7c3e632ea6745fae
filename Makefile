SHELL := /bin/bash
# Two entry points: `make demo` and `make test`. Each creates .venv and installs into it when missing
# (or when pyproject.toml changed), so both work on a fresh machine and are quick the second time.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_FLAGS := --disable-pip-version-check --no-input -q

.PHONY: demo test lint fmt venv postgres stack-up stack-down bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[dev]' 2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/earthsnap demo --auto-approve

test: $(STAMP) lint postgres
	$(BIN)/python -m pytest

# The production-instance tests start a real PostgreSQL server: Debian's package, installed if missing.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	  else echo "PostgreSQL is needed by the tests: sudo apt-get install postgresql" >&2; exit 1; fi; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

stack-up: $(STAMP)
	$(BIN)/earthsnap stack up

stack-down: $(STAMP)
	$(BIN)/earthsnap stack down

bench: $(STAMP)
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/serve.py

clean:
	-$(BIN)/earthsnap stack down
	rm -rf .earthsnap
