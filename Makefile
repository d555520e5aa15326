# `make serve` and `make test` do all set-up on a fresh clone: they (re)build .venv when pyproject changes.
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCAL_STAMP := $(VENV)/.installed-local

NODE_CLIENTS := tests/node/node_modules/.installed

.PHONY: serve test lint typecheck unit bench clean node-clients

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The local-model engine's extra for the tests: torch's CPU build first (pip finds it on these
# machines' disk), so that diffusers and transformers never pull a CUDA build.
$(LOCAL_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q 'torch==2.13.0'
	$(BIN)/python -m pip install -q -e '.[dev,local]'
	touch $(LOCAL_STAMP)

serve: $(STAMP)
	$(BIN)/imagegate serve --host $(HOST) --port $(PORT)

lint: $(LOCAL_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(LOCAL_STAMP)
	$(BIN)/mypy --strict src tests bench

# Node's official openai package for the end-to-end tests, where node and npm are present.
$(NODE_CLIENTS): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-clients:
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory $(NODE_CLIENTS); \
	else echo "node/npm not found: the Node.js client tests will be skipped"; fi

unit: $(LOCAL_STAMP) node-clients
	$(BIN)/pytest

test: lint typecheck unit

bench: $(LOCAL_STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) imagegate-data tests/node/node_modules
