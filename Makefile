# make run: serve the demo.  make test: lint, type-check and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install proto lint test run clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

proto: $(INSTALLED)
	rm -rf generated/instantorders
	$(BIN)/python protos/generate.py generated

lint: $(INSTALLED)
	$(BIN)/ruff check server gateway tests protos
	$(BIN)/ruff format --check server gateway tests protos
	$(BIN)/mypy server gateway

test: lint
	$(BIN)/pytest

run: $(INSTALLED)
	$(BIN)/instant-orders demo

clean:
	rm -rf $(VENV) *.egg-info demo.db*
