# Every target installs into .venv first (created when missing), so on a fresh machine `make test` or
# `make demo` alone is enough. torch is pinned to the CPU build 2.13.0 (served from local disk here).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH ?= torch==2.13.0
DATA ?= ../shared/data
THREADS ?= 2

.PHONY: install test demo bench lint demo-bundle models explainers evaluate clip-sweep clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/medcam-fast demo --out demo-out

# Peers (grad-cam, captum) need torchvision, i.e. torch 2.14.1 + torchvision 0.29.1: their own venv.
PEERS := .venv-peers
$(PEERS)/.installed-stamp: pyproject.toml
	test -x $(PEERS)/bin/python || $(PY) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PEERS)/bin/python -m pip install -q -e ".[baselines,dev]"
	touch $@

bench: $(STAMP) $(PEERS)/.installed-stamp
	MEDCAM_DATA_DIR=$(DATA) $(BIN)/medcam-fast bench per-image --threads 1
	for d in $${QUALITY_DATASETS:-breast pneumonia blood path}; do \
	  MEDCAM_DATA_DIR=$(DATA) $(BIN)/medcam-fast bench quality --threads 1 --datasets $$d --weights-ks 0,1,2,5,10,20 \
	    || exit 1; \
	done
	$(PEERS)/bin/medcam-fast bench speed

lint: $(STAMP)
	$(BIN)/ruff check medcam_fast cli export tests

# Reproduce the committed artifacts (seeded; minutes on 2 CPU cores).
models: $(STAMP)
	for spec in breast:40 pneumonia:15 blood:40 path:40; do d=$${spec%%:*}; e=$${spec##*:}; \
	  MEDCAM_DATA_DIR=$(DATA) $(BIN)/medcam-fast train-classifier --data $$d --out models/$$d/classifier \
	    --epochs $$e --threads 1 --overwrite || exit 1; \
	done

DEMO := medcam_fast/assets/demo
demo-bundle: $(STAMP)
	$(BIN)/medcam-fast train-classifier --data lesions --out $(DEMO)/classifier --epochs 10 --threads 1 --overwrite
	$(BIN)/medcam-fast meta-train --classifier $(DEMO)/classifier --data lesions --out $(DEMO)/amortized \
	  --inner-steps 0 --outer-steps 600 --width 8 --threads 1 --overwrite
	$(BIN)/medcam-fast meta-train --classifier $(DEMO)/classifier --data lesions --out $(DEMO)/explainer \
	  --inner-steps 3 --first-order --outer-steps 60 --width 8 --init $(DEMO)/amortized --threads 1 --overwrite
	rm -rf $(DEMO)/amortized
	$(BIN)/medcam-fast export --explainer $(DEMO)/explainer --overwrite
	rm -f $(DEMO)/explainer/checkpoint.json $(DEMO)/explainer/checkpoint.safetensors

# The explainers behind `bench quality` and `evaluate` (20 CPU minutes each, two jobs side by side):
# 10 min amortized training (runs/<d>-amortized10), then in parallel
#   models/<d>/explainer — 10 min of logits-inner-loop MAML (K = 10, first order) on top of it, exported to ONNX;
#   models/<d>/amortized — the same amortized run continued to 20 min: the equal-budget baseline.
MT = MEDCAM_DATA_DIR=$(DATA) $(BIN)/medcam-fast meta-train --threads 1
explainers: $(STAMP)
	for d in $${EXPLAINER_SETS:-breast pneumonia blood path}; do \
	  $(MT) --classifier models/$$d/classifier --data $$d --out runs/$$d-amortized10 --inner-steps 0 \
	    --outer-steps 50000 --minutes 10 --overwrite || exit 1; \
	  rm -rf models/$$d/amortized models/$$d/explainer && mkdir -p models/$$d/amortized && \
	  cp runs/$$d-amortized10/checkpoint.* models/$$d/amortized/ && \
	  { $(MT) --classifier models/$$d/classifier --data $$d --out models/$$d/amortized --inner-steps 0 \
	      --outer-steps 50000 --minutes 20 --resume & \
	    $(MT) --classifier models/$$d/classifier --data $$d --out models/$$d/explainer --inner-mode logits \
	      --first-order --inner-steps 10 --outer-lr 1e-3 --outer-steps 50000 --minutes 10 \
	      --init runs/$$d-amortized10 --overwrite; wait; } && \
	  $(BIN)/medcam-fast export --explainer models/$$d/explainer --overwrite && \
	  rm -f models/$$d/*/checkpoint.* || exit 1; \
	done

# The report behind the README's evaluation tables (benchmarks/evaluate), with the settings that fit the
# 2-core CPU (about 2 CPU hours; each method is cached, so a new explainer reruns only medcam-fast's first
# guess and refinement): 64 test images per set, RISE 1000 masks, Extremal Perturbations 100 steps per
# area, sanity check on 8 images at 2 stages, ROAD on 4. The full protocol (64 images, 4000 masks, 300
# steps, 16 images at 4 stages) is the command's default: EVAL_SETTINGS= ; on a GPU add
# EVAL_ARGS="--device cuda --batch-size 64". Needs the peers (.venv-peers, as for `bench`).
EVAL_SETTINGS = --n 64 --sanity-n 8 --sanity-stages 2 --rise-masks 1000 --extremal-steps 100 --road-n 4
evaluate: $(PEERS)/.installed-stamp
	MEDCAM_DATA_DIR=$(DATA) TQDM_DISABLE=1 PYTHONWARNINGS=ignore $(PEERS)/bin/medcam-fast evaluate --models models \
	  --data lesions --data breast --data pneumonia --data path --data blood $(EVAL_SETTINGS) \
	  --out benchmarks/evaluate --resume $(EVAL_ARGS)

# The refined masks at start clips 3, 1, 0.3 and 0.01: minimality against the sanity check
# (benchmarks/results/clip_sweep.{json,md}; about 15 CPU minutes).
clip-sweep: $(STAMP)
	MEDCAM_DATA_DIR=$(DATA) $(BIN)/python scripts/clip_sweep.py

clean:
	rm -rf $(VENV) demo-out medcam-out .pytest_cache
