# Quick start: `make run` (the pipeline on the embedded stack) and `make test`.
# Each sets itself up on a fresh machine with Python 3.11: no Docker. The browser tests
# and `make screenshots` need Debian's chromium: installed with apt-get when missing (root).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | cksum | cut -d' ' -f1)

CHROMIUM := /usr/bin/chromium
REDIS := /usr/bin/redis-server

.PHONY: run demo test test-unit docs conformance screenshots lint stack-up stack-down status clean compose-seed audit

# LocalStack's venv (tasks/dev/localstack_venv.py, standard library only) is installed
# beside the project's: a fresh clone waits for the two installs once, not one after the other.
# A later change to its pins is installed by `stack up` (the same installer), not here.
LOCALSTACK_VENV ?= $(or $(STACK_DIR),.stack)/localstack-venv

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PYTHON) tasks/dev/localstack_venv.py $(LOCALSTACK_VENV) & localstack=$$!; \
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt \
	&& $(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .; project=$$?; \
	wait $$localstack && test $$project = 0
	rm -f $(VENV)/.installed-*; touch $@

# Debian packages the tests need: chromium (Flower in a real browser) and redis-server
# (the result backend of Celery's own suites).
$(CHROMIUM) $(REDIS):
	@package=$$(basename $@); \
	if [ "$$(id -u)" != 0 ]; then \
		echo "$$package is missing and only root can install it: sudo apt-get install -y $$package" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$package >/dev/null; \
	test -x $@ || { echo "apt-get installed no $@" >&2; exit 1; }

run: $(STAMP)           ## worker, beat and Flower on the embedded stack, until Ctrl-C
	$(PY) -m tasks dev run --seed $(or $(SEED),1000)

demo: $(STAMP)          ## seed 1,000 events, drain them, print a summary, exit
	$(PY) -m tasks dev run --drain --seed $(or $(SEED),1000)

test: $(STAMP) $(CHROMIUM) $(REDIS)  ## lint and types, then the whole suite against real LocalStack, PostgreSQL, workers and Flower in chromium
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

conformance: $(STAMP) $(REDIS)  ## Celery's and kombu's own SQS integration suites, stock against ours -> docs/transport.md
	$(PY) -m tasks dev conformance --write-docs

docs: $(STAMP)          ## regenerate README's tables made from the code: settings (celeryconfig.py) and commands (tasks/cli)
	$(PY) -m tasks dev docs

test-unit: $(STAMP)     ## the pure functions only: no services, a few seconds
	$(PY) -m pytest tests/unit

# Not part of `test`: it asks a vulnerability service (pypi.org's JSON API; `AUDIT_SERVICE=osv`
# for osv.dev) about every pinned package. --strict fails when a package could not be checked,
# instead of reporting "No known vulnerabilities found" for packages it never looked up.
audit: $(STAMP)         ## known vulnerabilities of requirements.txt and requirements-dev.txt
	$(VENV)/bin/pip-audit --strict --vulnerability-service $(or $(AUDIT_SERVICE),pypi) -r requirements.txt
	$(VENV)/bin/pip-audit --strict --vulnerability-service $(or $(AUDIT_SERVICE),pypi) -r requirements-dev.txt

screenshots: $(STAMP) $(CHROMIUM)  ## docs/img/flower-*.png: Flower on the embedded stack, in chromium
	$(PY) -m tasks.dev.screenshots

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy

stack-up: $(STAMP)
	$(PY) -m tasks dev stack up

stack-down: $(STAMP)
	$(PY) -m tasks dev stack down

status: $(STAMP)
	$(PY) -m tasks status

# The image carries no seed command (tasks/dev is development only): send the exercise's
# events from here to compose's LocalStack, published on 127.0.0.1:4566.
compose-seed: $(STAMP)  ## load the exercise's 100 events into `docker compose up`'s login-queue
	SQS_ENDPOINT_URL=http://127.0.0.1:4566 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
		$(PY) -m tasks dev seed $(if $(COUNT),--count $(COUNT))

clean:
	-$(PY) -m tasks dev stack down
	rm -rf $(VENV) .stack
