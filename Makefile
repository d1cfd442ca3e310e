# The README's commands. `make demo` on a fresh machine sets everything up and
# runs the main job on the built-in demo; `make test` runs the whole suite.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Re-install only when what the build reads has changed.
BUILD_INPUTS := requirements-dev.txt pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null)

.PHONY: setup demo ops-demo experiment lint format test test-slow bench clean

setup: build/.setup-stamp

build/.setup-stamp: $(BUILD_INPUTS)
	$(PIP) install -r requirements-dev.txt
	# SAM 2.1 (Meta's sam2, an sdist): built against the torch above, without its optional CUDA extension
	SAM2_BUILD_CUDA=0 $(PIP) install --no-build-isolation "sam2==1.1.0"
	$(PIP) install --no-build-isolation -e .
	@mkdir -p build && touch $@

# The main job on the built-in demo: make the dataset, then pseudo-label it with SAM
# (tiny, random weights unless SAM_CHECKPOINT/SAM_MODEL are given, e.g. SAM_MODEL=sam2.1_hiera_t)
# through the cache.
DEMO_DIR ?= build/demo
SAM_MODEL ?= tiny
SAM_CHECKPOINT ?=
demo: setup
	$(PYTHON) -m wsseg_fast info
	$(PYTHON) -m wsseg_fast make-demo $(DEMO_DIR)/data --images 8 --seed 0
	$(PYTHON) -m wsseg_fast pseudo-label --coco $(DEMO_DIR)/data/annotations.json --method sam-box \
		--model $(SAM_MODEL) $(if $(SAM_CHECKPOINT),--checkpoint $(SAM_CHECKPOINT)) \
		--cache $(DEMO_DIR)/cache --out $(DEMO_DIR)/pseudo-labels --visualize --overwrite

ops-demo: setup
	$(PYTHON) -m wsseg_fast ops-demo

# Both stages on the demo (tiny SAM): box vs SBR pseudo-labels, students; report.json/md/png.
experiment: setup
	$(PYTHON) -m wsseg_fast experiment demo --out build/experiment

# Style: ruff (lint + format, 120 columns) for Python, clang-format for C++/CUDA; CI checks it
# before the tests. `make format` applies both.
CXX_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' 2>/dev/null)
CLANG_FORMAT = $(shell $(PYTHON) -c 'import clang_format; print(clang_format.get_executable("clang-format"))')

lint: setup
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(CLANG_FORMAT) --dry-run --Werror $(CXX_SOURCES)

format: setup
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .
	$(CLANG_FORMAT) -i $(CXX_SOURCES)

# `make test` proves every op (each backend against its reference) and every pipeline on small cases;
# `make test-slow` runs the rest: multi-process runs (torchrun, Ray, SIGKILL), the Triton kernels
# compiled for GPUs, and the cases that take seconds under the Triton interpreter. CI runs both.
test: setup
	$(PYTHON) -m pytest -m "not slow"

test-slow: setup
	$(PYTHON) -m pytest -m slow

bench: setup
	$(PYTHON) -m pytest benchmarks --benchmark-json=benchmarks/results/latest.json
	$(PYTHON) benchmarks/report.py benchmarks/results/latest.json

clean:
	rm -rf build wsseg_fast/_C*.so *.egg-info
