# The two commands a user needs: `make demo` and `make test`. Everything else here supports them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
comma := ,
UV_VERSION := 0.13.8
ENVS := .envs
UV := $(ENVS)/bootstrap/bin/uv
CONTROL := $(ENVS)/control/bin
MERLIN := $(ENVS)/merlin/bin

# Tests are laid out like the package; each runtime runs the tests of the code it executes:
# the Merlin runtime the ETL and training (and data, which both runtimes import), the control plane the rest.
MERLIN_ONLY := tests/features tests/training
MERLIN_TESTS := tests/data $(MERLIN_ONLY)
CONTROL_TESTS := tests $(addprefix --ignore=,$(MERLIN_ONLY))

.PHONY: help envs peers chromium demo test down status bench clean

help:
	@echo "make demo   build both environments, start the local stack, run the pipeline through Airflow"
	@echo "make test   build both environments and run the whole test suite"
	@echo "make down   stop the local stack        make status   show the local services"
	@echo "make bench  run the benchmarks (JSON in bench/results/); one or some: make bench BENCH=serving,events;"
	@echo "            each one's quick mode: make bench QUICK=1 (<name>-quick.json); what runs: make bench LIST=1"

# uv itself, pinned, in a small bootstrap venv: nothing is installed outside this folder.
$(UV):
	@echo "==> bootstrapping uv $(UV_VERSION) into $(ENVS)/bootstrap"
	@$(PYTHON) -m venv $(ENVS)/bootstrap
	@$(ENVS)/bootstrap/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Each environment is rebuilt only when the lock (or pyproject) changed; uv's cache makes a rebuild seconds.
# Bytecode is compiled at install: imports stay fast even where PYTHONDONTWRITEBYTECODE is set.
$(ENVS)/%/.synced: pyproject.toml uv.lock | $(UV)
	@echo "==> syncing the $* environment ($(ENVS)/$*) from uv.lock"
	@UV_PROJECT_ENVIRONMENT=$(ENVS)/$* $(UV) sync --frozen --compile-bytecode --extra $* --python $(PYTHON)
	@touch $@

envs: $(ENVS)/control/.synced $(ENVS)/merlin/.synced

# The classical peers of the benchmarks (implicit ALS, Feast): a third environment, built on demand by bench/run_all.py.
peers: $(ENVS)/peers/.synced

# The UI test (tests/ui) drives a real headless Chromium: Debian's package, installed when missing
# (CI runs as root; elsewhere through passwordless sudo). If it cannot be installed, `make test` goes on
# and the browser test fails saying how to install it.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "==> installing Debian's chromium (for tests/ui)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
		{ $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; } \
			|| echo "warning: could not install chromium (needs root); tests/ui will fail until it is installed" >&2; \
	fi

demo: envs
	@$(CONTROL)/recsys demo

test: envs chromium
	@echo "==> Merlin runtime tests"
	@$(MERLIN)/python -m pytest $(MERLIN_TESTS)
	@echo "==> control plane tests"
	@$(CONTROL)/python -m pytest $(CONTROL_TESTS)

down:
	@if [ -x $(CONTROL)/recsys ]; then $(CONTROL)/recsys stack down; fi

status: envs
	@$(CONTROL)/recsys stack status

# bench/run_all.py lists every benchmark with its interpreter and prerequisites, installs what is missing
# (the peers environment through `make peers`, Debian's redis-tools and wrk through apt-get as root or
# `sudo -n`, else a warning), runs them one after another and keeps going past a failure.
bench: envs
	@$(CONTROL)/python bench/run_all.py $(subst $(comma), ,$(BENCH)) $(if $(QUICK),--quick) $(if $(LIST),--list)

clean: down
	rm -rf .recsys
