# gpuserve.vllm: the two commands of the README, and their parts.
#   make deploy   controller setup, then ansible-playbook site.yml (default inventory)
#   make test     controller + test setup, then every check CI runs
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV      ?= .venv
BIN       := $(CURDIR)/$(VENV)/bin
PYTHON    ?= python3
INVENTORY ?= inventories/local/hosts.yml
ARGS      ?=
# Default: every molecule/<name>/molecule.yml except the demo (see `make demo`), longest
# first, so MOLECULE_JOBS (default 2) parallel lanes finish close together.
NOT_IN_CI := demo
LONGEST_FIRST := serve_rollout gpu_stack compose_runtime monitoring serve vllm_build triton_decommission container_images preflight
ALL_SCENARIOS := $(filter-out $(NOT_IN_CI),$(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))
SCENARIOS ?= $(filter $(ALL_SCENARIOS),$(LONGEST_FIRST)) $(sort $(filter-out $(LONGEST_FIRST),$(ALL_SCENARIOS)))
export MOLECULE_JOBS ?= 2

export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help deploy demo demo-destroy test lint unit molecule images docker compose-v2 bench-api version-lock clean vllm-source-bundle

help:
	@echo "make deploy   set up the controller and run site.yml against $(INVENTORY)"
	@echo "make test     set up the controller and test tools, then run every check"
	@echo "make demo     run site.yml against a throwaway local systemd container"
	@echo "make lint | unit | molecule [SCENARIOS='a b'] | images | bench-api | version-lock"
	@echo "make vllm-source-bundle SOURCE=<vLLM sdist or tree> BUNDLE=<new dir> [BUNDLE_ARGS=...]"

# --- controller setup -------------------------------------------------------
$(VENV)/.controller: requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "python3 is required (apt-get install python3 python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { echo "creating the venv failed: apt-get install python3-venv"; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	@# PyPI's `ansible` bundles requirements.yml's collections; Galaxy only for missing ones.
	@for c in $$($(BIN)/python -c 'import yaml; print(*(c["name"] for c in yaml.safe_load(open("requirements.yml"))["collections"]))'); do \
	  $(BIN)/ansible-galaxy collection list "$$c" >/dev/null 2>&1 \
	    || { echo "collection $$c missing: installing requirements.yml from Galaxy"; \
	         $(BIN)/ansible-galaxy collection install -r requirements.yml -p collections; break; }; \
	done
	touch $@

$(VENV)/.tests: $(VENV)/.controller tests/requirements.txt files/api/pyproject.toml files/api/sim/pyproject.toml
	$(BIN)/pip install -q -r tests/requirements.txt -e 'files/api[test]' -e 'files/api/sim[harness]'
	touch $@

# --- the README's commands --------------------------------------------------
deploy: $(VENV)/.controller
	$(BIN)/ansible-playbook -i $(INVENTORY) site.yml $(ARGS)

# In `make test` the Docker-backed unit and playbook tests (compose v2 CLI, test images) must
# run: missing tools fail them instead of skipping them (tests/conftest.py).
test: export GPUSERVE_TESTS_REQUIRE_DOCKER := 1
test: $(VENV)/.tests docker images compose-v2 lint unit molecule
	@echo "make test: all checks passed"

# --- air-gapped vLLM builds (docs/vllm-build.md) ------------------------------
# Every CMake FetchContent dependency of SOURCE at the revision its own CMake files pin,
# plus a wheelhouse of its build requirements and manifest.json. BUNDLE_ARGS: --mirror
# URL=GITDIR, --given NAME=DIR, --exclude GLOB, --skip-submodule NAME:PATH, --pip-arg ...
vllm-source-bundle:
	@[[ -n "$(SOURCE)" && -n "$(BUNDLE)" ]] || { echo "usage: make vllm-source-bundle SOURCE=<vLLM sdist or source tree> BUNDLE=<new dir> [BUNDLE_ARGS='--mirror URL=GITDIR ...']"; exit 2; }
	$(PYTHON) roles/vllm_build/files/vllm_source_bundle.py create --source "$(SOURCE)" --out "$(BUNDLE)" $(BUNDLE_ARGS)

# --- parts ------------------------------------------------------------------
docker:
	tests/docker-engine.sh

# Debian 13's compose v2 CLI for the compose runtime's tests (tests/fixtures/compose_v2/fetch.sh).
compose-v2: .cache/compose-v2/docker-compose
.cache/compose-v2/docker-compose: tests/fixtures/compose_v2/fetch.sh | images
	tests/fixtures/compose_v2/fetch.sh

images: docker
	@command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
	tests/images/build.sh

lint: $(VENV)/.tests
	yamllint -s .
	ansible-lint --profile production
	for p in site.yml playbooks/*.yml; do ansible-playbook --syntax-check "$$p"; done
	ruff check .
	ruff format --check .
	$(BIN)/python tests/check_argument_specs.py
	out=$$(mktemp -d) && ansible-galaxy collection build --force --output-path "$$out" && rm -rf "$$out"

unit: $(VENV)/.tests
	$(BIN)/pytest -p no:cacheprovider -rs tests/unit tests/playbooks tests/gpu
	cd files/api && $(BIN)/pytest -p no:cacheprovider tests

molecule: $(VENV)/.tests docker images
	tests/molecule_scenarios.sh $(SCENARIOS)

demo: $(VENV)/.tests docker images
	$(BIN)/python tests/demo.py

demo-destroy: $(VENV)/.tests
	molecule destroy -s demo

# Re-read from PyPI what the version matrix's pins require (needs PyPI; commit the result).
version-lock: $(VENV)/.tests
	$(BIN)/python tests/version_lock.py

bench-api: $(VENV)/.tests
	$(BIN)/python -m gpuserve_sim.bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
