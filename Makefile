# Quickstart: `make demo` (install + main job on the embedded data), `make test` (install + test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo
CONFIG := search_spaces/resnet20_fashionmnist.yaml

.PHONY: demo prune-demo test test-slow test-all lint gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off -e '.[test]'
	touch $(STAMP)

# The main job: a search on the embedded data with the base shipped in the package: 400 stage-0 candidates scored by
# resident evaluators (NSGA-II, latency predicted), the 6 best within the constraints fine-tuned on Ray Tune; then the
# most accurate front point finalized: pruned again from the base, fine-tuned with the full budget (16 epochs) and
# distillation, exported (with model.onnx and model.int8.onnx), and beside it the uniform policy measured closest to its
# latency, finalized the same way (--against uniform: what the search bought). A fresh run directory each time. The demo's
# constraints replace the config's list: accuracy >= base - 0.12 (a 1-epoch fine-tune only ranks; finalize
# recovers), and at least a 1.56x speedup (latency <= 0.64 x the base's; what a structure reaches differs by CPU).
DEMO_CONSTRAINTS := [accuracy >= base - 0.12, latency_ms <= base * 0.64]
demo: $(STAMP)
	rm -rf $(DEMO)/search $(DEMO)/final
	$(BIN)/autoprune search $(CONFIG) --out $(DEMO)/search --set "constraints=$(DEMO_CONSTRAINTS)"
	$(BIN)/autoprune finalize $(DEMO)/search --pick best --out $(DEMO)/final --against uniform
	@echo "results: $(DEMO)/search/trials.parquet  front: $(DEMO)/search/front.parquet  plot: $(DEMO)/search/pareto.png"
	@echo "model:   $(DEMO)/final/ (model card: $(DEMO)/final/README.md, metrics: $(DEMO)/final/metrics.json)"

# The single-candidate pipeline: one hand-written non-uniform policy, pruned, fine-tuned, measured.
prune-demo: $(STAMP)
	@test -f $(DEMO)/base.pt || $(BIN)/autoprune train-base --model resnet20 --epochs 10 --out $(DEMO)/base.pt
	$(BIN)/autoprune prune --base $(DEMO)/base.pt --policy examples/resnet20_policy.json \
		--out $(DEMO)/pruned --finetune-epochs 3 --kd

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ""

# On a CUDA machine: four trials sharing one GPU (resources.gpu 0.25) and a finalize; device, trials per hour,
# GPU utilisation, CUDA latency. Exits 2 where there is no CUDA device.
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

lint: $(STAMP)
	$(BIN)/ruff check autoprune tests bench examples
	$(BIN)/mypy autoprune

clean:
	rm -rf runs .pytest_cache
