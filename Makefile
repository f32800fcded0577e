# Developer and CI commands. `make help` lists them; docs/development.md explains them.
# Every target creates the virtualenv first when needed; `make run` installs requirements.txt (what
# serving needs), the test, lint and load targets requirements-dev.txt on top.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Touched after a successful install; reinstall when the requirements file is newer.
INSTALLED := $(VENV)/.requirements-installed
DEV_INSTALLED := $(VENV)/.requirements-dev-installed

PYTEST_ARGS ?=
LOAD_USERS ?= 20
LOAD_SPAWN_RATE ?= 5
LOAD_TIME ?= 30s
LOAD_HOST ?=

.PHONY: help install install-dev install-otel run test-lead chaos test lint format migrations-check load reset test-env

help:
	@echo "make run               start the stack (embedded PostgreSQL/Valkey unless DATABASE_URL/REDIS_URL are set)"
	@echo "make test-lead         send a signed Meta test lead into the running make run, follow it to the portal"
	@echo "make chaos             the chaos suite (TARGETS reliability 1, 2, 3, 5, 11, 12) on private servers"
	@echo "make test              run the test suite (PYTEST_ARGS='-k ... --create-db' to pass options)"
	@echo "make install-dev       add the test, lint and load packages (requirements-dev.txt)"
	@echo "make install-otel      add the optional OpenTelemetry packages (requirements-otel.txt)"
	@echo "make lint              ruff check + ruff format --check"
	@echo "make format            ruff format + ruff check --fix"
	@echo "make migrations-check  fail when models and migrations disagree"
	@echo "make load              30 s headless locust run against a running server, reports in reports/"
	@echo "make reset             stop leftovers and delete .data/ (embedded database and demo credentials)"
	@echo "make test-env          show which PostgreSQL/Redis the tests would use"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

install: $(INSTALLED)

$(DEV_INSTALLED): requirements-dev.txt $(INSTALLED)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

install-dev: $(DEV_INSTALLED)

# The optional OpenTelemetry extra (docs/observability.md); `make test` installs it so its tests run.
OTEL_INSTALLED := $(VENV)/.requirements-otel-installed

$(OTEL_INSTALLED): requirements-otel.txt $(INSTALLED)
	$(PY) -m pip install --quiet -r requirements-otel.txt
	@touch $@

install-otel: $(OTEL_INSTALLED)

run: $(INSTALLED)
	$(PY) -m converzia.devstack run

# A signed Meta lead into the running `make run` (TEST_LEAD_ARGS='--count 5' for more).
TEST_LEAD_ARGS ?=
test-lead: $(INSTALLED)
	$(PY) -m converzia.devstack test-lead -- $(TEST_LEAD_ARGS)

test: $(DEV_INSTALLED) $(OTEL_INSTALLED)
	$(PY) -m converzia.devstack test -- $(PYTEST_ARGS)

# The chaos suite on private servers (docs/operations.md "Chaos suite"); CHAOS_ARGS=--short for CI's size.
CHAOS_ARGS ?=
chaos: $(DEV_INSTALLED)
	$(PY) -m converzia.chaos $(CHAOS_ARGS)

test-env: $(INSTALLED)
	@$(PY) -m converzia.devstack test-env

lint: $(DEV_INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEV_INSTALLED)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# makemigrations reads the database only to check migration history; give it the test servers.
migrations-check: $(INSTALLED)
	$(PY) -m converzia.devstack exec -- $(PY) manage.py makemigrations --check --dry-run

# Against LOAD_HOST, else the running `make run` (whatever port it picked), else http://127.0.0.1:8000.
load: $(DEV_INSTALLED)
	@mkdir -p reports
	host="$(LOAD_HOST)"; \
	if [ -z "$$host" ]; then host="$$($(PY) -m converzia.devstack url 2>/dev/null || echo http://127.0.0.1:8000)"; fi; \
	echo "locust against $$host for $(LOAD_TIME)"; \
	$(VENV)/bin/locust -f locustfile.py --headless --host "$$host" \
		--users $(LOAD_USERS) --spawn-rate $(LOAD_SPAWN_RATE) --run-time $(LOAD_TIME) \
		--csv reports/load --html reports/load.html --only-summary

reset: $(INSTALLED)
	$(PY) -m converzia.devstack reset
