# hpo-operator: `make help` lists the targets. Every target sets up what it needs itself.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
PY := $(VENV)/bin/python
export UV_CACHE_DIR ?= $(HOME)/.cache/uv
# uv trusts the platform's certificate store, as pip, git and curl do (registries behind a site CA).
export UV_SYSTEM_CERTS ?= 1
REQUIREMENTS := trial-image/requirements.txt operator/requirements.txt cli/requirements.txt tests/requirements.txt
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: $(REQUIREMENTS) operator/pyproject.toml trial-image/pyproject.toml cli/pyproject.toml
	@echo "setting up $(VENV) (first time: downloads torch with its CUDA wheels, several GB)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q uv==$(UV_VERSION)
	@$(VENV)/bin/uv pip install --python $(PY) $(addprefix -r ,$(REQUIREMENTS))
	@$(VENV)/bin/uv pip install --python $(PY) --no-deps -e operator -e trial-image -e cli
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create or update the virtual environment .venv (with the kubectl plugin .venv/bin/kubectl-hpo)

.PHONY: debian-packages
debian-packages: ## Install the Debian packages the testbed needs (MariaDB, runc, buildah, mmdebstrap, iptables), if missing
	@tests/testbed/install-debian-packages.sh

.PHONY: binaries
binaries: venv ## Build every Go binary (control plane, kubelet, containerd, CNI, CoreDNS, registry, helm) into ~/.cache/hpo-operator
	@$(PY) -m tests.testbed build

.PHONY: images
images: venv debian-packages ## Build the operator, trial, MySQL and dashboard images (buildah, no Docker) and push them to the local registry
	@$(PY) -m tests.testbed images

.PHONY: images-check
images-check: venv debian-packages ## Build the images if needed, then run each once with runc: non-root, read-only root, every sampler
	@$(PY) -m tests.testbed images-check

.PHONY: images-prune
images-prune: venv debian-packages ## Free the disk older image builds hold (local layers, the registry's older tags)
	@$(PY) -m tests.testbed images-prune

.PHONY: testbed-up
testbed-up: venv debian-packages ## Start the control plane, two real nodes (kubelet, containerd), the registry with the images, MariaDB (idempotent)
	@$(PY) -m tests.testbed up

.PHONY: testbed-down
testbed-down: ## Stop everything the testbed and other targets started; remove .testbed/
	@if [ -x $(PY) ]; then $(PY) -m tests.testbed down; else rm -rf .testbed; fi

.PHONY: testbed-status
testbed-status: ## Show whether each testbed process runs, and the nodes
	@$(PY) -m tests.testbed status

.PHONY: test
test: checks testbed-up ## Lint, type-check, then run every test tier (unit, integration, end to end) on the testbed
	@$(VENV)/bin/pytest $(PYTEST_ARGS)

.PHONY: demo
demo: operator-up ## The quickstart study end to end: testbed, operator, progress, best parameters
	@$(PY) -m tests.testbed.demo

.PHONY: lock
lock: venv ## Re-pin the requirement files from the pyproject files
	@$(VENV)/bin/uv pip compile -q --python-version 3.11 --python-platform x86_64-manylinux_2_28 trial-image/pyproject.toml --all-extras -o trial-image/requirements.txt
	@$(VENV)/bin/uv pip compile -q --python-version 3.11 --python-platform x86_64-manylinux_2_28 operator/pyproject.toml -c trial-image/requirements.txt -o operator/requirements.txt
	@$(VENV)/bin/uv pip compile -q --python-version 3.11 --python-platform x86_64-manylinux_2_28 cli/pyproject.toml -c trial-image/requirements.txt -c operator/requirements.txt --no-emit-package hpo-trial -o cli/requirements.txt
	@$(VENV)/bin/uv pip compile -q --python-version 3.11 tests/testbed/dockerfiles/dashboard/requirements.in -c trial-image/requirements.txt -o tests/testbed/dockerfiles/dashboard/requirements.txt
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

.PHONY: kueue-up
kueue-up: testbed-up ## Build Kueue from its Go module and install it with the ClusterQueue testbed-gpus and LocalQueue default/user-queue (idempotent)
	@$(PY) -m tests.testbed kueue-up

.PHONY: kueue-down
kueue-down: ## Remove Kueue, its queues and workloads from the testbed
	@$(PY) -m tests.testbed kueue-down

.PHONY: checks
checks: venv ## Lint and format-check (ruff), type-check (mypy strict) the operator, the trial runtime and the CLI
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check --quiet . || { echo "ruff format: files above need formatting; run: .venv/bin/ruff format ."; exit 1; }
	@$(VENV)/bin/mypy operator/src/hpo_operator trial-image/src/hpo_trial cli/src/hpo_cli

.PHONY: bench
bench: operator-up ## Benchmarks against the Slurm-style baseline: a table, and .bench/latest.json (QUICK=1: ~20 min)
	@$(PY) -m tests.bench $(if $(filter 1,$(QUICK)),--quick)

# --- The Helm chart (charts/hpo-operator) on the testbed -------------------------------------------
CHART := charts/hpo-operator
CHART_RELEASE ?= hpo
CHART_NAMESPACE ?= hpo-system

.PHONY: chart-up
chart-up: testbed-up ## helm install the chart into the testbed (operator image from the registry, its MariaDB, 1 replica; replaces operator-up)
	@$(PY) -m tests.testbed operator-down >/dev/null  # two operators serving one namespace would fight
	@source .testbed/env && \
	  kubectl apply --server-side -f crds/ >/dev/null && \
	  kubectl create namespace $(CHART_NAMESPACE) --dry-run=client -o yaml | kubectl apply -f - >/dev/null && \
	  kubectl label namespace $(CHART_NAMESPACE) --overwrite pod-security.kubernetes.io/enforce=restricted \
	    pod-security.kubernetes.io/warn=restricted >/dev/null && \
	  kubectl -n $(CHART_NAMESPACE) create secret generic $(CHART_RELEASE)-mysql-admin \
	    --from-literal=username="$$HPO_MYSQL_USER" --from-literal=password="$$HPO_MYSQL_PASSWORD" \
	    --dry-run=client -o yaml | kubectl apply -f - >/dev/null && \
	  helm upgrade --install $(CHART_RELEASE) $(CHART) -n $(CHART_NAMESPACE) --set operator.replicas=1 \
	    --set image.repository="$${HPO_OPERATOR_IMAGE%:*}" --set image.tag="$${HPO_OPERATOR_IMAGE##*:}" \
	    --set operator.trialImage.repository="$${HPO_TRIAL_IMAGE%:*}" \
	    --set operator.trialImage.tag="$${HPO_TRIAL_IMAGE##*:}" \
	    --set mysql.enabled=false --set mysql.external.host="$$HPO_MYSQL_HOST" \
	    --set mysql.external.port="$$HPO_MYSQL_PORT" --set mysql.external.adminSecret.name=$(CHART_RELEASE)-mysql-admin \
	    --wait --timeout 5m && \
	  kubectl -n $(CHART_NAMESPACE) wait --for=condition=Available --timeout=3m deployment \
	    -l app.kubernetes.io/instance=$(CHART_RELEASE),app.kubernetes.io/component=operator

.PHONY: chart-down
chart-down: ## helm uninstall the chart's release (the CRDs, the namespace and the studies' databases stay)
	@source .testbed/env && \
	  if helm status $(CHART_RELEASE) -n $(CHART_NAMESPACE) >/dev/null 2>&1; then \
	    helm uninstall $(CHART_RELEASE) -n $(CHART_NAMESPACE) --wait; \
	  else echo "no release $(CHART_RELEASE) in $(CHART_NAMESPACE)"; fi

.PHONY: chart-verify
chart-verify: binaries ## Check the chart's crds/ holds exactly crds/, then helm lint --strict and render every option
	@diff -r crds $(CHART)/crds >/dev/null || { echo "$(CHART)/crds differs from crds/: cp crds/*.yaml $(CHART)/crds/"; exit 1; }
	@helm=$$($(PY) -c 'from tests.testbed.build import build_all; print(build_all(["helm"])["helm"])' | tail -1) && \
	  $$helm lint --strict $(CHART) && \
	  for options in "" "--set mysql.enabled=false --set mysql.external.host=db --set mysql.external.adminSecret.name=db" \
	    "--set rbac.scope=namespaced --set watchNamespaces={a,b}" "--set dashboard.enabled=true --set dashboard.study=a/b" \
	    "--set networkPolicy.enabled=true --set namespace.create=true --set operator.replicas=2" \
	    "--set metrics.serviceMonitor.enabled=true --api-versions monitoring.coreos.com/v1/ServiceMonitor" \
	    "--set metrics.grafanaDashboard.enabled=true"; do \
	    $$helm template hpo $(CHART) $$options >/dev/null || { echo "helm template $$options failed"; exit 1; }; \
	  done && echo "chart OK: crds/ in sync, lint clean, every option renders"
