# The two commands a newcomer needs: `make demo` and `make test` (CI runs `make test`).
# Both set up the host first (dev/provision-host: Docker engine, base image, qemu), idempotently.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# No container registry is reachable on the project's machines: the suite uses the dind image
# built from the recipe shipped in the package.
export PYTEST_DOCKER_DIND_IMAGE ?= pytest-isolated-docker/dind:latest
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck unit-fast unit bench stress docs host images clean

host:
	dev/provision-host

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

images: host $(BIN)/.installed
	$(BIN)/pytest-isolated-docker build-image dind --quiet

demo: images
	@echo "== running examples/ with the default backend (dind) =="
	$(BIN)/pytest examples -v -s $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

# The fast tier: no Docker engine, QEMU or network, only the venv. The plugin is kept out of this
# run (-p no:isolated_docker): loaded, it sweeps the host engine at the start and end of every
# session. PYTEST_ARGS (--docker-* options) are for the engine suite and are not passed here.
unit-fast: $(BIN)/.installed
	$(BIN)/pytest tests/fast -n 2 -p no:randomly -p no:isolated_docker -q

# The engine suite: real daemons (tests/fast ran in unit-fast).
unit: images
	$(BIN)/pytest tests --ignore=tests/fast -n 2 -m "not serial" $(PYTEST_ARGS)
	$(BIN)/pytest tests --ignore=tests/fast -m serial $(PYTEST_ARGS)

# The docs, with warnings as errors; -E rereads every page so that no warning hides in a cache.
docs: $(BIN)/.installed
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html

# The examples as a user runs them (dind), then through the guard (examples/test_host_mount.py
# expects the guard's refusal there).
test: lint typecheck unit-fast docs unit
	$(BIN)/pytest examples $(PYTEST_ARGS)
	$(BIN)/pytest examples --docker-backend=guarded $(PYTEST_ARGS)

bench: images
	$(BIN)/python dev/bench.py

stress: images
	$(BIN)/python dev/stress.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache bench-results.json bench-results-guard.json
