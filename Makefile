# Every target installs into .venv first (created when missing), so on a fresh machine `make test` or
# `make demo` alone is enough. torch is pinned to the CPU build 2.13.0 (served from local disk here).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH ?= torch==2.13.0
DATA ?= ../shared/data
THREADS ?= 2

.PHONY: install test demo bench lint demo-bundle models clean

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

bench: $(STAMP)
	MEDCAM_DATA_DIR=$(DATA) $(BIN)/medcam-fast bench per-image --threads $(THREADS)

lint: $(STAMP)
	$(BIN)/ruff check medcam_fast cli export tests

# Reproduce the committed artifacts (seeded; minutes on 2 CPU cores).
models: $(STAMP)
	for d in breast pneumonia blood path; do \
	  MEDCAM_DATA_DIR=$(DATA) $(BIN)/medcam-fast train-classifier --data $$d --out models/$$d/classifier \
	    --epochs $${EPOCHS:-30} --threads $(THREADS) --overwrite || exit 1; \
	done

demo-bundle: $(STAMP)
	$(BIN)/medcam-fast train-classifier --data lesions --out medcam_fast/assets/demo/classifier \
	  --epochs 12 --threads $(THREADS) --overwrite

clean:
	rm -rf $(VENV) demo-out medcam-out .pytest_cache
