# Quick start: `make run` (the pipeline on the embedded stack) and `make test`.
# Each sets itself up on a fresh machine with Python 3.11: no Docker. The browser tests
# and `make screenshots` need Debian's chromium: installed with apt-get when missing (root).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# Two stamps, remade when a pyproject.toml or a lock changes: the demo's install (the runtime
# and the embedded stack's `stack` extra) and the tests' (adding `dev`).
INPUTS := $(shell cat requirements.txt requirements-dev.txt pyproject.toml dev/pyproject.toml | cksum | cut -d' ' -f1)
DEMO_STAMP := $(VENV)/.demo-$(INPUTS)
TEST_STAMP := $(VENV)/.test-$(INPUTS)

CHROMIUM := /usr/bin/chromium
REDIS := /usr/bin/redis-server
PROMTOOL := /usr/bin/promtool
PODMAN := /usr/bin/podman

.PHONY: run demo test test-unit docs lock conformance screenshots lint stack-up stack-down status clean compose-up compose-seed audit upgrade-check

# LocalStack's venv (dev/devkit/localstack_venv.py, standard library only) is installed
# beside the project's: a fresh clone waits for the two installs once, not one after the other.
# A later change to its pins is installed by `dev stack up` (the same installer), not here.
LOCALSTACK_VENV ?= $(or $(STACK_DIR),.stack)/localstack-venv

# The runtime and pgserver at the development lock's versions (it pins the runtime as
# requirements.txt does), the project and its development tooling (dev/, the `dev` commands)
# editable: what `make demo` needs, nothing for tests.
$(DEMO_STAMP): requirements.txt requirements-dev.txt pyproject.toml dev/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PYTHON) dev/devkit/localstack_venv.py $(LOCALSTACK_VENV) & localstack=$$!; \
	$(PIP) --constraint requirements-dev.txt -e '.[stack]' -e ./dev; project=$$?; \
	wait $$localstack && test $$project = 0
	rm -f $(VENV)/.demo-*; touch $@

$(TEST_STAMP): $(DEMO_STAMP)
	$(PIP) -r requirements-dev.txt
	rm -f $(VENV)/.test-*; touch $@

# Debian packages the tests need: chromium (Flower in a real browser) and redis-server
# (the result backend of Celery's own suites).
$(CHROMIUM) $(REDIS):
	@package=$$(basename $@); \
	if [ "$$(id -u)" != 0 ]; then \
		echo "$$package is missing and only root can install it: sudo apt-get install -y $$package" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$package >/dev/null; \
	test -x $@ || { echo "apt-get installed no $@" >&2; exit 1; }

# Debian's prometheus: promtool (`promtool check rules` and `test rules` on deploy/prometheus)
# and the server the end-to-end alert test and `make screenshots` start on a free port with
# their own config and data folder. Its postinst starts the package's own service (port
# 9090, as user prometheus); the tests never use it, so it is stopped and disabled at once
# (a Docker-style policy-rc.d has already refused to start it: stopping then is a no-op).
# No recommends: prometheus-node-exporter would be one more service.
$(PROMTOOL):
	@if [ "$$(id -u)" != 0 ]; then \
		echo "promtool is missing and only root can install it: sudo apt-get install -y --no-install-recommends prometheus" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	if [ -d /run/systemd/system ]; then systemctl disable --now prometheus.service >/dev/null 2>&1; \
	else /etc/init.d/prometheus stop >/dev/null 2>&1; update-rc.d prometheus disable >/dev/null 2>&1; fi; \
	test -x $@ && test -x /usr/bin/prometheus || { echo "apt-get installed no $@" >&2; exit 1; }

# Debian's podman for the compose test (tests/test_compose.py): docker-compose.yml on a real
# container engine, with runc (crun refuses this kind of machine's hybrid cgroups), iptables for
# its bridge network, and mmdebstrap to make the Debian base of the images it stands in for.
$(PODMAN):
	@if [ "$$(id -u)" != 0 ]; then \
		echo "podman is missing and only root can install it: sudo apt-get install -y podman runc iptables mmdebstrap" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc iptables mmdebstrap >/dev/null; \
	test -x $@ && command -v mmdebstrap >/dev/null || { echo "apt-get installed no $@ or mmdebstrap" >&2; exit 1; }

run: $(DEMO_STAMP)           ## worker, beat and Flower on the embedded stack, until Ctrl-C
	$(PY) -m tasks dev run --seed $(or $(SEED),1000)

demo: $(DEMO_STAMP)          ## seed 1,000 events, drain them, print a summary, exit
	$(PY) -m tasks dev run --drain --seed $(or $(SEED),1000)

test: $(TEST_STAMP) $(CHROMIUM) $(REDIS) $(PROMTOOL) $(PODMAN)  ## lint and types, then the whole suite against real LocalStack, PostgreSQL, workers, Flower in chromium and compose on podman
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

conformance: $(TEST_STAMP) $(REDIS)  ## Celery's and kombu's own SQS integration suites, stock against ours -> docs/transport.md
	$(PY) -m tasks dev conformance --write-docs

docs: $(TEST_STAMP)     ## regenerate the docs' tables made from the code (settings, metrics, commands) and the Grafana dashboard
	$(PY) -m tasks dev docs
	$(PY) -m devkit.dashboard

test-unit: $(TEST_STAMP)     ## the pure functions only: no services, a few seconds
	$(PY) -m pytest tests/unit

# pyproject.toml's ranges -> requirements.txt and requirements-dev.txt, fully pinned (uv).
lock: $(TEST_STAMP)     ## remake the two locks after a change to pyproject.toml's dependencies
	$(PY) dev/devkit/lock.py

# Not part of `test`: it asks a vulnerability service (pypi.org's JSON API; `AUDIT_SERVICE=osv`
# for osv.dev) about every pinned package. --strict fails when a package could not be checked,
# instead of reporting "No known vulnerabilities found" for packages it never looked up.
audit: $(TEST_STAMP)       ## known vulnerabilities of requirements.txt and requirements-dev.txt
	$(VENV)/bin/pip-audit --strict --vulnerability-service $(or $(AUDIT_SERVICE),pypi) -r requirements.txt
	$(VENV)/bin/pip-audit --strict --vulnerability-service $(or $(AUDIT_SERVICE),pypi) -r requirements-dev.txt

screenshots: $(TEST_STAMP) $(CHROMIUM) $(PROMTOOL)  ## docs/img/flower-*.png and prometheus-*.png: Flower and Prometheus on the embedded stack, in chromium
	$(PY) -m devkit.screenshots

lint: $(TEST_STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy

stack-up: $(DEMO_STAMP)
	$(PY) -m tasks dev stack up

stack-down: $(DEMO_STAMP)
	$(PY) -m tasks dev stack down

status: $(DEMO_STAMP)
	$(PY) -m tasks status

# `docker compose up -d` for a newcomer: fresh random secrets in .env (mode 600, git-ignored)
# the first time, kept after that. COMPOSE=podman-compose for podman.
COMPOSE ?= docker compose
compose-up:                  ## docker compose up -d, with fresh secrets in .env made the first time
	$(PYTHON) deploy/compose/env.py .env
	$(COMPOSE) up -d

# The image carries no seed command (dev/ is development only): send the exercise's
# events from here to compose's LocalStack, published on 127.0.0.1:LOCALSTACK_HOST_PORT (4566).
compose-seed: $(DEMO_STAMP)  ## load the exercise's 100 events into `docker compose up`'s login-queue
	SQS_ENDPOINT_URL=http://127.0.0.1:$(or $(LOCALSTACK_HOST_PORT),4566) AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
		$(PY) -m tasks dev seed $(if $(COUNT),--count $(COUNT))

clean:
	-$(PY) -m tasks dev stack down
	rm -rf $(VENV) .stack

# The overrides' upstream packages (celery, kombu, flower, billiard, boto3, botocore, tornado) at
# the newest releases the index offers within pyproject's ranges, and at the next minor beyond
# where one exists, each in a throwaway venv under .stack/upgrade-check/: the unit layer and the
# transport, pool and Flower integration tests, one file at a time under the stack lock
# (docs/upgrading.md). Prints what moved and what broke.
upgrade-check: $(TEST_STAMP)  ## the unit layer and the override tests against the newest celery/kombu/flower/... on the index
	$(PY) dev/devkit/upgrade_check.py $(UPGRADE_CHECK)
