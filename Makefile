# Thin wrappers; every target sets up .venv first if needed.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# No telemetry, no hub downloads (see DESIGN.md).
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1

.PHONY: setup demo test lint clean-state help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.slmops-installed  ## create .venv (torch 2.13.0 first, then slmops[dev])

$(VENV)/.slmops-installed: pyproject.toml infra/setup.sh
	./infra/setup.sh

demo: setup  ## run the pipeline on the shipped BANKING77 data
	$(BIN)/slmops demo

test: setup  ## ruff + pytest (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: setup  ## fix lint and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
