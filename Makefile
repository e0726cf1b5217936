# Thin wrappers; every target sets up .venv first if needed.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# No telemetry, no hub downloads: nothing reaches the network (docs/architecture.md).
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := true

.PHONY: setup browser demo demo-loop test lint bench bench-quick services services-stop services-status postgres postgres-stop label-studio label-studio-stop deploy help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.slmops-installed  ## create .venv (torch 2.13.0 first, then slmops[dev])

$(VENV)/.slmops-installed: pyproject.toml infra/setup.sh
	./infra/setup.sh

demo: setup  ## run the pipeline on the shipped BANKING77 data
	$(BIN)/slmops demo

demo-loop: setup  ## after demo: serve, send feedback, ingest it, retrain, serve the new champion
	$(BIN)/slmops demo-loop

browser:  ## Debian's chromium for the browser tests (apt-get when root and missing)
	./infra/setup-browser.sh

test: setup browser  ## ruff, import contracts (lint-imports), pytest (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest

# `make bench QUICK=1` is `make bench-quick` (make itself cannot take `--quick`).
bench: setup  ## run the benchmarks; writes benchmarks/results/*.json and benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks $(if $(QUICK),--quick,)

bench-quick: setup  ## the benchmarks on subsets (under 10 minutes); results in benchmarks/results/quick/
	$(BIN)/python -m benchmarks --quick

lint: setup  ## fix lint and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

services: setup  ## start Prefect server + worker and MLflow server on 127.0.0.1 (.run/)
	./infra/services.sh start

services-stop:  ## stop the services started by `make services`
	./infra/services.sh stop

services-status:  ## which services are running
	./infra/services.sh status

postgres:  ## a PostgreSQL cluster on 127.0.0.1 (.run/postgres; installs Debian's server as root); prints its URL
	./infra/postgres.sh install
	./infra/postgres.sh start
	./infra/postgres.sh url

postgres-stop:  ## stop that cluster (its data stays in .run/postgres)
	./infra/postgres.sh stop

label-studio:  ## a Label Studio server on 127.0.0.1 (own venv and data in .run/label-studio); prints its URL
	./infra/label-studio.sh install
	./infra/label-studio.sh start
	@echo "url:   $$(./infra/label-studio.sh url)   (label_studio.url in params.yaml)"
	@echo "token: export LABEL_STUDIO_API_KEY=$$(./infra/label-studio.sh token)"

label-studio-stop:  ## stop that server (its data stays in .run/label-studio)
	./infra/label-studio.sh stop

# `make deploy DEPLOY_ARGS="--params other/params.yaml --paused"`: see --help of the module.
deploy: setup  ## register the deployments (retrain weekly, ingest_feedback hourly, monitor), their automations
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} $(BIN)/python -m slmops.flows.deployments $(DEPLOY_ARGS)
