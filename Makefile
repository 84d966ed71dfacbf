# The two commands of the README: `make demo` and `make test`. Everything they need is installed
# and started here, so they work on a fresh machine (Python 3.11+, root for the Docker engine).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= demo-out

.PHONY: demo test setup engine lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	@touch $@

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
	@# Type-check schemas/ and transforms/ under their import names (smelter.*): the folders are
	@# mapped by setuptools' package-dir, which mypy cannot follow, so give it a symlinked tree.
	@mkdir -p build/mypy/smelter && for d in schemas transforms pipeline; do \
	  ln -sfn ../../../$$d build/mypy/smelter/$$d; done
	MYPYPATH=build/mypy $(BIN)/mypy --ignore-missing-imports --follow-imports=silent \
	  -p smelter.schemas -p smelter.transforms

test: engine lint
	$(BIN)/python -m pytest

bench: engine
	for b in tests/benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
