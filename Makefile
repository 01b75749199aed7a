# Two commands on a fresh machine with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The oldest framework releases pyproject claims (keep in step with its extras and README).
OLD_VENV  := .venv-oldest
OLD_STAMP := $(OLD_VENV)/.installed-stamp
OLDEST    := 'tensorflow==2.20.*' 'keras==3.12.*' 'tf-keras==2.20.*'

TORCH_ZOO := 'torchvision==0.28.0' 'pillow==12.3.0' 'timm==1.0.29' 'transformers==5.18.0' \
	'huggingface_hub==1.33.0' 'httpx==0.28.1' 'httpcore==1.0.9' 'h11==0.16.0' 'anyio==4.16.0'

.PHONY: setup demo demo-torch test test-core test-oldest mutate bench conformance zoo zoo-torch \
	clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch 2.13.0 is the CPU build on the project machine's disk (a looser range would take a
	# CUDA build of several GB); it only serves the Keras 3 torch-backend tests.
	$(BIN)/python -m pip install --quiet -e '.[keras,tf-keras,jax,test]' 'torch==2.13.0'
	# keras-hub only builds the model zoo's backbones from config (tests/keras3/zoo.py): without its
	# dependencies, which would bring tensorflow-text and hub downloads; it needs regex and
	# tokenizers to import.
	$(BIN)/python -m pip install --quiet --no-deps 'keras-hub==0.32.0' 'regex>=2023' 'tokenizers>=0.19'
	# The PyTorch model zoo (tests/torch/zoo.py) builds torchvision, timm and transformers models
	# from code and tiny configs, nothing downloaded. Without their dependencies, so that torch
	# stays the CPU build above: torchvision 0.28.0 is the release made for torch 2.13.0 (its
	# compiled ops are a CUDA build and do not load: the zoo defines the two it needs to import),
	# pillow for its import; timm 1.0.29; transformers 5.18 with huggingface_hub and the httpx
	# stack it imports. About 20 s on the project machine.
	$(BIN)/python -m pip install --quiet --no-deps $(TORCH_ZOO)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/optstate demo --out demo-out

demo-torch: $(STAMP)
	$(BIN)/python examples/torch_swapped.py

test: $(STAMP)
	$(BIN)/python spec/generate.py --check
	$(BIN)/python -m pytest
	$(MAKE) test-oldest

$(OLD_STAMP): pyproject.toml
	test -x $(OLD_VENV)/bin/python || $(PYTHON) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLD_VENV)/bin/python -m pip install --quiet -e '.[test]' $(OLDEST)
	touch $(OLD_STAMP)

# The Keras converters' tests again, on the oldest releases the extras admit.
test-oldest: $(OLD_STAMP)
	$(OLD_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/keras3/test_keras3.py \
		tests/tf_keras/test_tf_keras.py tests/keras3/test_resume.py

test-core: $(STAMP)
	$(BIN)/python -m pytest -m "not framework"

# Mutation testing of the core matching/journal/identity/paths/registry/conductor modules
# against the framework-free tests ([tool.mutmut] in pyproject.toml; docs/mutation.md). Slow:
# not part of `make test`. MUTATE_JOBS sets the parallel workers.
MUTATE_JOBS ?= 2
mutate: $(STAMP)
	rm -rf mutants
	nice -n 10 $(BIN)/python -m mutmut run --max-children $(MUTATE_JOBS)
	$(BIN)/python -m mutmut results

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_io.py

# Every keras.applications and tf_keras.applications model and the keras_hub backbones of
# tests/keras3/zoo.py: train a step, rebuild, import, check each slot against its layer;
# prints the table (long: see README).
zoo: $(STAMP)
	KERAS_BACKEND=tensorflow $(BIN)/python tests/keras3/zoo.py

# Every case of tests/torch/zoo.py (torchvision, timm, transformers): train, export, rebuild
# wrapped or regrouped, import, check each state entry by name, continue bit for bit; prints the
# table. `make test` runs the CI subset (tests/torch/test_torch_zoo.py).
zoo-torch: $(STAMP)
	$(BIN)/python tests/torch/zoo.py

conformance: $(STAMP)
	$(BIN)/python spec/generate.py

clean:
	rm -rf $(VENV) $(OLD_VENV) demo-out build *.egg-info
