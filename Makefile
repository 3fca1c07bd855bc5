# Quickstart: `make demo` (install + main job on the embedded data), `make test` (install + test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo

.PHONY: demo test test-all clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	@test -f $(DEMO)/base.pt || $(BIN)/autoprune train-base --model resnet20 --epochs 10 --out $(DEMO)/base.pt
	$(BIN)/autoprune prune --base $(DEMO)/base.pt --policy examples/resnet20_policy.json \
		--out $(DEMO)/pruned --finetune-epochs 3 --kd

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ""

clean:
	rm -rf $(DEMO) .pytest_cache
