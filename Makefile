# Two commands for a newcomer: `make run` and `make test`. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT := medsam_out/demo

.PHONY: run demo test lint install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps re-run pip only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The portal: web + one worker per queue. The first start prints the admin password once.
run: $(VENV)/.installed
	$(BIN)/medsam serve

# The command-line demo: segment the bundled CT slice and write npy/PNG outputs.
demo: $(VENV)/.installed
	$(BIN)/medsam segment demo/ct_abdomen.png --box 95 255 190 350 --out $(DEMO_OUT)
	@echo "Demo outputs (mask .npy, mask .png, overlay .png) are in $(DEMO_OUT)/"

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Style and import checks everywhere; strict typing for the engine and the store (settings in pyproject.toml).
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python bench/segment_latency.py

clean:
	rm -rf medsam_out .pytest_cache .mypy_cache .ruff_cache
