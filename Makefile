# Two commands: `make run` (the daemon on the bundled sample) and `make test` (the whole suite).
# Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck unit bench-smoke clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "reversib needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# The daemon on the bundled sample, history in var/reversib.db; Ctrl-C stops it.  http://127.0.0.1:8637/metrics
run: $(STAMP)
	$(BIN)/reversib run --config config/reversib.yaml

lint: $(STAMP)
	$(BIN)/ruff check reversib tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

bench-smoke: $(STAMP)
	$(BIN)/python bench/run.py --smoke

test: lint typecheck unit bench-smoke

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
