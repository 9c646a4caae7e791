# The two README commands: `make demo` and `make test`. Both create .venv and install on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean bento container container-check

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev,bulk]'
	touch $(STAMP)

install: $(STAMP)

# the container test (a Docker daemon, minutes of image building) is its own step: .ci/run, or
# `$(PY) -m pytest -m container` where a daemon answers. PYTEST_ARGS: more pytest options (.ci/run adds
# --junitxml, from which .ci/required.py checks that the tests .ci/required lists ran)
PYTEST_ARGS ?=

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not container" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# PORT: where the demo serves. A second `make demo` reuses the trained run and the stored model (one line each)
# instead of training again, and refuses a port in use with one line before anything else runs.
PORT ?= 3000
DEMO_RUN := runs/digits-resnet18

# `deploy.demo trained` fails when the run folder holds no finished run; an interrupted one there is trained
# again, hence --overwrite (fit refuses a folder holding a run without it).
demo: install
	@$(PY) -m deploy.demo port $(PORT)
	@$(PY) -m deploy.demo trained $(DEMO_RUN) || \
	  $(PY) -m training fit --config configs/digits_resnet18.yaml --out $(DEMO_RUN) --overwrite
	$(PY) -m training evaluate $(DEMO_RUN)/best.pt --split test
	@$(PY) -m deploy.demo stored digits-resnet18 $(DEMO_RUN)/best.pt || \
	  $(PY) -m export $(DEMO_RUN)/best.pt --out models/digits-resnet18.onnx --store digits-resnet18
	@echo "checkpoint: $(DEMO_RUN)/best.pt  curves: $(DEMO_RUN)/curves.png  log: $(DEMO_RUN)/train.log"
	@echo "ONNX: models/digits-resnet18.onnx  model store: bentoml models get digits-resnet18:latest"
	@echo "serving on http://localhost:$(PORT) (Swagger page: http://localhost:$(PORT)/) - try:"
	@echo "  curl -F images=@data/digits/test/3/$$(ls data/digits/test/3 | head -1) http://localhost:$(PORT)/classify"
	$(VENV)/bin/bentoml serve --port $(PORT)

bench: install
	$(PY) -m pip install -q -e '.[dev,bulk,bench]'
	$(PY) -m bench.train_throughput --arch resnet18 resnet50 efficientnet_v2_s --size 64 --batch 16 --steps 5
	$(PY) -m bench.serve_load --quick --models digits --concurrency 1 16 64 --duration 3 --warmup 1

# A Bento of the models SERVING_CONFIG names (default serving.yaml), which it then serves: `bentoml serve TAG`. Its
# ONNX Runtime is the one the config's device needs (onnxruntime for cpu, else onnxruntime-gpu; deploy/bento.py), and
# it ends with the next steps: bentoml serve TAG, make container SERVING_CONFIG=...
SERVING_CONFIG ?= serving.yaml

bento: install
	SERVING_CONFIG=$(SERVING_CONFIG) $(PY) -m deploy.bento

# Containers (README, "Container"): VARIANT=cpu|gpu, BASE_IMAGE=python:3.11-slim to use a registry base instead
# of the offline Debian one, IMAGE=name:tag, SERVING_CONFIG=mine.yaml for the models mine.yaml names. Needs a running
# Docker daemon; see deploy/container.sh.
VARIANT ?= cpu
IMAGE ?= classifier:$(VARIANT)

container: install
	VARIANT=$(VARIANT) IMAGE=$(IMAGE) VENV=$(VENV) SERVING_CONFIG=$(SERVING_CONFIG) deploy/container.sh

container-check: install
	$(PY) -m deploy.check --image $(IMAGE) --variant $(VARIANT)

clean:
	rm -rf runs data bench/results
