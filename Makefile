# The README's commands. `make demo` on a fresh machine sets everything up and
# runs the main job on the built-in demo; `make test` runs the whole suite.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Re-install only when what the build reads has changed.
BUILD_INPUTS := requirements-dev.txt pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null)

.PHONY: setup demo test bench clean

setup: build/.setup-stamp

build/.setup-stamp: $(BUILD_INPUTS)
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-build-isolation -e .
	@mkdir -p build && touch $@

demo: setup
	$(PYTHON) -m wsseg_fast info
	$(PYTHON) -m wsseg_fast ops-demo

test: setup
	$(PYTHON) -m pytest

bench: setup
	$(PYTHON) -m pytest benchmarks --benchmark-json=benchmarks/results/latest.json
	$(PYTHON) benchmarks/report.py benchmarks/results/latest.json

clean:
	rm -rf build wsseg_fast/_C*.so *.egg-info
