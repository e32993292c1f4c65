# Two entry points for a newcomer (see README):
#   make dev    - build what is missing, start a local super cluster, the appliance and a sample tenant
#   make test   - build what is missing and run the whole test suite
#   make conformance - upstream's Kubernetes conformance suite against a tenant on the real node
#                      (FOCUS='regex' for a subset, CONFORMANCE_ARGS for more flags; see README)
# Everything built lands in ~/.cache/vc-appliance (Go binaries) or .venv (Python), never in git.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STATE  ?= $(CURDIR)/state
STAMP  := $(VENV)/.installed

.PHONY: dev dev-down test unit lint testbin venv hostdeps conformance image

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

hostdeps: $(STAMP)
	$(PY) -m appliance.controlplane.hostdeps

testbin: hostdeps
	$(PY) -m appliance.controlplane.build

dev: testbin
	$(VENV)/bin/vc-appliance dev up --state-dir $(STATE)

dev-down: $(STAMP)
	$(VENV)/bin/vc-appliance dev down --state-dir $(STATE)

# The suite's real-node package runs a subset of upstream's conformance tests: build e2e.test too.
test: testbin
	$(PY) -m appliance.controlplane.build --conformance
	$(PY) -m pytest

FOCUS ?= \[Conformance\]
conformance: testbin
	$(PY) -m bench.conformance --focus '$(FOCUS)' $(CONFORMANCE_ARGS)

# The container image (podman, no registry): localhost/vc-appliance:<version>. See README.
image: testbin
	$(PY) -m appliance.controlplane.containerimage $(IMAGE_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit

lint: $(STAMP)
	$(PY) -m pip install --quiet -e '.[lint]'
	$(VENV)/bin/ruff check appliance tests bench
	$(VENV)/bin/mypy
