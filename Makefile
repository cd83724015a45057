# lmforge: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmforge-installed
PYTEST_ARGS ?=
PIP := $(BIN)/pip install --quiet --no-compile

.PHONY: install demo test test-slow bench lint clean

install: $(STAMP)

# torch comes first and pinned: resolving a bare `torch` would fetch a multi-GB CUDA build.
# --no-build-isolation lets setup.py see that torch to build the kernels (only the variant this
# CPU loads; LMFORGE_BUILD_VARIANTS=all builds every one). --no-compile skips byte-compiling
# all of torch up front: Python compiles what it imports, once.
$(STAMP): pyproject.toml setup.py $(wildcard csrc/*) examples/lmforge-sqlite/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "$(TORCH_SPEC)" setuptools wheel ninja numpy
	$(PIP) --no-build-isolation -e ".[dev,onnx,serve]" ./examples/lmforge-sqlite
	-$(BIN)/python -m lmforge.ops
	touch $@

demo: install
	$(BIN)/lmforge run examples/configs/demo.yaml

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m pytest benchmarks -s -o python_files='bench_*.py' -o addopts='' \
		--benchmark-columns=median,min,max,rounds $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check core cli csrc plugins tests benchmarks examples setup.py

clean:
	rm -rf build *.egg-info core/_C*.so
