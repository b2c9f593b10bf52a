# Quick start: `make run` (the pipeline on the embedded stack) and `make test`.
# Each sets itself up on a fresh machine with Python 3.11: no Docker. The browser tests
# and `make screenshots` need Debian's chromium: installed with apt-get when missing (root).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | cksum | cut -d' ' -f1)

CHROMIUM := /usr/bin/chromium

.PHONY: run demo test lint screenshots stack-up stack-down status clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-*; touch $@

$(CHROMIUM):
	@if [ "$$(id -u)" != 0 ]; then \
		echo "chromium is missing and only root can install it: sudo apt-get install -y chromium" >&2; exit 1; fi
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
	@test -x $@ || { echo "apt-get installed no $@" >&2; exit 1; }

run: $(STAMP)           ## worker, beat and Flower on the embedded stack, until Ctrl-C
	$(PY) -m tasks run --seed $(or $(SEED),1000)

demo: $(STAMP)          ## seed 1,000 events, drain them, print a summary, exit
	$(PY) -m tasks run --drain --seed $(or $(SEED),1000)

test: $(STAMP) $(CHROMIUM)  ## lint, then the whole suite against real LocalStack, PostgreSQL and workers
	$(PY) -m ruff check .
	$(PY) -m pytest

screenshots: $(STAMP) $(CHROMIUM)  ## docs/img/flower-*.png: Flower on the embedded stack, in chromium
	$(PY) -m tasks.dev.screenshots

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

stack-up: $(STAMP)
	$(PY) -m tasks stack up

stack-down: $(STAMP)
	$(PY) -m tasks stack down

status: $(STAMP)
	$(PY) -m tasks status

clean:
	-$(PY) -m tasks stack down
	rm -rf $(VENV) .stack
