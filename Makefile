# Shipyard developer targets.
#
#   make test           everything, on a fresh machine: packages, venv, lint, unit, proxy,
#                       and integration tests against a throwaway lab (what .ci/run calls)
#   make demo           the README's main job
#   make venv           .venv with shipyard installed editable, plus the dev tools
#   make lint           ruff, and mypy --strict on core/, plugins/ and proxy/
#   make test-fast      the unit tier only
#
# Multi-host test lab (tests/lab/README.md): hosts h1..hN in network namespaces on
# this machine, each with its own sshd and dockerd. Needs root.
#   make lab-up N=3     bring it up (installs the Debian packages it needs first)
#   make lab-status     what runs; exits non-zero unless the lab is fully up
#   make lab-test       integration tests against the running lab
#   make lab-down       stop everything the lab started
#   ssh -F .lab/ssh_config h1

N ?= 3
# lab.py needs only the standard library: the venv's python if there is one, else the system's.
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
LAB := $(PYTHON) tests/lab/lab.py

.PHONY: lab-packages lab-up lab-down lab-status lab-test lab-clean venv lint test test-fast demo

VENV := .venv
# The interpreter that makes the venv; python3 >= 3.11.
SYSTEM_PYTHON ?= python3

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

lint: venv
	.ci/lint

test-fast: venv
	$(VENV)/bin/pytest -m unit -q

test: lab-packages venv lint
	bash .ci/test-all

demo: lab-packages venv
	bash examples/demo.sh

lab-packages:
	bash tests/lab/install-packages.sh

lab-up: lab-packages
	$(LAB) up --hosts $(N)

lab-down:
	$(LAB) down

lab-status:
	$(LAB) status

lab-test:
	SHIPYARD_LAB_EXTERNAL=1 SHIPYARD_LAB_HOSTS=$(N) $(PYTHON) -m pytest tests/integration

# Like lab-down, and also forget registry data, keys and logs.
lab-clean:
	$(LAB) down --purge
