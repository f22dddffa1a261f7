# The two commands of the README:
#   make demo   set up .venv and run a small real FineInstructions job on the embedded defaults
#   make test   set up .venv and run the test suite
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/demo

.PHONY: setup demo test lint typecheck bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/fineinstructions demo --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

typecheck: setup
	$(BIN)/mypy

clean:
	rm -rf runs .pytest_cache .ruff_cache
