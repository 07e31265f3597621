# Everything a fresh machine with Python >= 3.11 needs: `make serve` and `make test` create the venv
# and install the project first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUF_VERSION := 1.75.0
ES_VERSION := 2.17.0
BUF := .tools/node_modules/.bin/buf
MAKIMA_TEST_POSTGRES_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/test
export MAKIMA_TEST_POSTGRES_URL

.PHONY: serve test lint protos check-protos unasync bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/makima-server serve

test: $(STAMP) $(BUF)
	$(BIN)/pytest

# buf (lint, breaking, curl) and protoc-gen-es, which tests use to generate a JavaScript client.
# Without npm, `make test` still runs: the few tests that need buf or node are skipped (CI fails them).
$(BUF):
	@if command -v npm >/dev/null; then \
		npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION) \
			@bufbuild/protoc-gen-es@$(ES_VERSION) @bufbuild/protobuf@$(ES_VERSION); \
	else echo "npm not found: tests that need buf or node will be skipped"; fi

lint: $(STAMP) $(BUF)
	test -x $(BUF) || { echo "make lint needs buf: install Node.js with npm"; exit 1; }
	$(BUF) lint
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/python scripts/unasync.py --check
	$(BIN)/ruff check server clients/python scripts tests bench
	$(BIN)/ruff format --check server clients/python scripts tests bench
	$(BIN)/mypy

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

# The blocking client is generated from the async one (scripts/unasync.py).
unasync: $(STAMP)
	$(BIN)/python scripts/unasync.py

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache .mypy_cache dist build
