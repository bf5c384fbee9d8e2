# hpo-operator: `make help` lists the targets. Every target sets up what it needs itself.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
PY := $(VENV)/bin/python
export UV_CACHE_DIR ?= $(HOME)/.cache/uv
REQUIREMENTS := trial-image/requirements.txt operator/requirements.txt tests/requirements.txt
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: $(REQUIREMENTS) operator/pyproject.toml trial-image/pyproject.toml
	@echo "setting up $(VENV) (first time: downloads torch with its CUDA wheels, several GB)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q uv==$(UV_VERSION)
	@$(VENV)/bin/uv pip install --python $(PY) $(addprefix -r ,$(REQUIREMENTS))
	@$(VENV)/bin/uv pip install --python $(PY) --no-deps -e operator -e trial-image
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create or update the virtual environment .venv

.PHONY: debian-packages
debian-packages: ## Install the Debian packages the testbed needs (MariaDB), if missing
	@tests/testbed/install-debian-packages.sh

.PHONY: binaries
binaries: venv ## Build etcd, the Kubernetes control plane, kubectl and helm into ~/.cache/hpo-operator
	@$(PY) -m tests.testbed build

.PHONY: testbed-up
testbed-up: venv debian-packages ## Start the local control plane, node agent and MariaDB (idempotent)
	@$(PY) -m tests.testbed up

.PHONY: testbed-down
testbed-down: ## Stop everything the testbed and other targets started; remove .testbed/
	@if [ -x $(PY) ]; then $(PY) -m tests.testbed down; else rm -rf .testbed; fi

.PHONY: testbed-status
testbed-status: ## Show whether each testbed process runs, and the node
	@$(PY) -m tests.testbed status

.PHONY: test
test: checks testbed-up ## Lint, type-check, then run every test tier (unit, integration, end to end) on the testbed
	@$(VENV)/bin/pytest $(PYTEST_ARGS)

.PHONY: demo
demo: operator-up ## The quickstart study end to end: testbed, operator, progress, best parameters
	@$(PY) -m tests.testbed.demo

.PHONY: lock
lock: venv ## Re-pin the requirement files from the pyproject files
	@$(VENV)/bin/uv pip compile -q --python-version 3.11 --python-platform x86_64-manylinux_2_28 trial-image/pyproject.toml -o trial-image/requirements.txt
	@$(VENV)/bin/uv pip compile -q --python-version 3.11 operator/pyproject.toml -c trial-image/requirements.txt -o operator/requirements.txt
	@$(VENV)/bin/uv pip compile -q --python-version 3.11 tests/requirements.in -c trial-image/requirements.txt -c operator/requirements.txt -o tests/requirements.txt

.PHONY: crds
crds: venv ## Regenerate crds/ from the operator's pydantic models
	@$(PY) -m hpo_operator.crd > crds/hpostudies.hpo.dev.yaml

.PHONY: operator-up
operator-up: testbed-up ## Start the operator against the testbed (idempotent; log in .testbed/logs/operator.log)
	@$(PY) -m tests.testbed operator-up

.PHONY: operator-down
operator-down: ## Stop the operator started by operator-up
	@$(PY) -m tests.testbed operator-down

.PHONY: checks
checks: venv ## Lint (ruff) and type-check (mypy strict) the operator and the trial runtime
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy operator/src/hpo_operator trial-image/src/hpo_trial
