# Two commands on a fresh machine with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test test-core bench conformance clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch 2.13.0 is the CPU build on the project machine's disk (a looser range would take a
	# CUDA build of several GB); it only serves the Keras 3 torch-backend tests.
	$(BIN)/python -m pip install --quiet -e '.[keras,tf-keras,jax,test]' 'torch==2.13.0'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/optstate demo --out demo-out

test: $(STAMP)
	$(BIN)/python spec/generate.py --check
	$(BIN)/python -m pytest

test-core: $(STAMP)
	$(BIN)/python -m pytest -m "not framework"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_io.py

conformance: $(STAMP)
	$(BIN)/python spec/generate.py

clean:
	rm -rf $(VENV) demo-out build *.egg-info
