# callbridge — two commands set up a fresh machine:
#   make run    creates .venv, installs callbridge, starts the daemon on its embedded defaults
#   make test   creates .venv, installs callbridge with its test extras and the system packages
#               the suite needs (Debian, when running as root), then runs the whole suite

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
TSTAMP  = $(VENV)/.installed-test

.PHONY: run test install install-test system-deps lint typecheck bench-media bench-load bench-recording clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml media/_native.c | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[fast]'
	touch $@

$(TSTAMP): pyproject.toml media/_native.c | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[fast,test]'
	touch $(STAMP) $@

install: $(STAMP)
install-test: $(TSTAMP) system-deps

system-deps:
	@bash .ci/system-deps

run: $(STAMP)
	-@bash .ci/system-deps runtime
	$(BIN)/callbridge serve

test: install-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(TSTAMP)
	$(BIN)/ruff check bridge sip media tenants tests bench

typecheck: $(TSTAMP)
	$(BIN)/mypy

bench-media: $(TSTAMP)
	$(BIN)/python -m bench.media

bench-load: $(TSTAMP)
	$(BIN)/python -m bench.load

bench-recording: $(TSTAMP)
	$(BIN)/python -m bench.recording

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
