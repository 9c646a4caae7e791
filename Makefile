# The two README commands: `make demo` and `make test`. Both create .venv and install on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean container container-check

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: install
	$(PY) -m training fit --config configs/digits_resnet18.yaml --out runs/digits-resnet18
	$(PY) -m training evaluate runs/digits-resnet18/best.pt --split test
	$(PY) -m export runs/digits-resnet18/best.pt --out models/digits-resnet18.onnx --store digits-resnet18
	@echo "checkpoint: runs/digits-resnet18/best.pt  curves: runs/digits-resnet18/curves.png"
	@echo "ONNX: models/digits-resnet18.onnx  model store: bentoml models get digits-resnet18:latest"
	@echo "serving on http://localhost:3000 - try:"
	@echo "  curl -F images=@data/digits/test/3/$$(ls data/digits/test/3 | head -1) http://localhost:3000/classify"
	$(VENV)/bin/bentoml serve --port 3000

bench: install
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m bench.train_throughput --arch resnet18 resnet50 efficientnet_v2_s --size 64 --batch 16 --steps 5
	$(PY) -m bench.serve_load --quick --models digits --concurrency 1 16 64 --duration 3 --warmup 1

# Containers (README, "Container"): VARIANT=cpu|gpu, BASE_IMAGE=python:3.11-slim to use a registry base instead
# of the offline Debian one, IMAGE=name:tag. Needs a running Docker daemon; see deploy/container.sh.
VARIANT ?= cpu
IMAGE ?= classifier:$(VARIANT)

container: install
	VARIANT=$(VARIANT) IMAGE=$(IMAGE) VENV=$(VENV) deploy/container.sh

container-check: install
	$(PY) -m deploy.check --image $(IMAGE) --variant $(VARIANT)

clean:
	rm -rf runs data bench/results
