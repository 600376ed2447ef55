# Postroom: `make run` starts the service on the embedded default, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck check openapi bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/postroom serve

test: $(STAMP)
	$(BIN)/pytest -q -n auto

lint: $(STAMP)
	$(BIN)/ruff check app tests migrations bench
	$(BIN)/ruff format --check app tests migrations bench
	$(BIN)/lint-imports
	$(BIN)/pylint app  # duplicate-code and too-many-lines only: [tool.pylint] in pyproject.toml

typecheck: $(STAMP)
	$(BIN)/mypy

check: test lint typecheck

openapi: $(STAMP)
	$(BIN)/python -m app.openapi_export > openapi/openapi.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
