# Two entry points for a fresh machine:  make demo  |  make test
# Each creates .venv, installs rtseg and its dependencies offline-capable, then runs.

VENV ?= .venv
PYTHON ?= python3
# CPU build of torch on CPU machines. On a CPU machine with internet access and no local wheel,
# add TORCH_INDEX=https://download.pytorch.org/whl/cpu so that pip does not fetch CUDA builds.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.rtseg-installed

.PHONY: setup demo test lint clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/rtseg run

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check rtseg tests

clean:
	rm -rf $(VENV) out
