# make run: serve the demo.  make test: lint, type-check and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install proto fmt lint test run bench bench-scaleout bench-bulk bench-tools clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

proto: $(INSTALLED)
	rm -rf generated/instantorders
	$(BIN)/python protos/generate.py generated

fmt: $(INSTALLED)
	$(BIN)/ruff check --fix server gateway tests protos bench
	$(BIN)/ruff format server gateway tests protos bench

lint: $(INSTALLED)
	$(BIN)/ruff check server gateway tests protos bench
	$(BIN)/ruff format --check server gateway tests protos bench
	$(BIN)/mypy server gateway bench tests

# Two workers: most tests wait on processes and databases, so both cores pay
# (measured: 5:52 against 10:03 in one process).
test: lint
	$(BIN)/pytest -n 2

# Load generators from the distribution's packages, matplotlib into the venv.
bench-tools: $(INSTALLED)
	command -v h2load >/dev/null && command -v wrk >/dev/null || \
		{ apt-get install -y -q nghttp2-client wrk || sudo apt-get install -y -q nghttp2-client wrk; }
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'

bench: bench-tools
	$(BIN)/python -m bench $(BENCH_ARGS)

# REST orders on 1 SQLite replica, 1 and 2 PostgreSQL replicas (needs PostgreSQL).
bench-scaleout: bench-tools
	$(BIN)/python -m bench.scaleout $(BENCH_ARGS)

# One 10,000-unit bulk order: seconds to place it, and to fulfil it after a restock.
bench-bulk: $(INSTALLED)
	$(BIN)/python -m bench.bulk $(BENCH_ARGS)

run: $(INSTALLED)
	$(BIN)/instant-orders demo

clean:
	rm -rf $(VENV) *.egg-info demo.db*
