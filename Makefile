# Every target runs in the project's own virtual environment, .venv, made from whatever
# python3 is here: Debian's own interpreter refuses installs into itself (PEP 668), and a
# venv keeps the tests' tools (binserve, uwsgi, uwsgitop) next to the interpreter that runs them.
# `make test` and `make bench` also install, as root, the Debian tools the tests drive.
# `.ci/run` calls `make test` and `make lint`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# systemd: only its tools (systemd-socket-activate, systemd-analyze); nothing makes it PID 1 here.
DEBIAN_TOOLS := nginx tmux wrk iproute2 procps systemd
APT := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: test test-fast lint bench demo debian-tools clean-venv

# The venv itself; Debian ships venv's pip bootstrap separately (python3-venv).
$(BIN)/python:
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null \
		|| { apt-get update -qq && $(APT) python3-venv >/dev/null; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.test: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

debian-tools:
	@missing=; for tool in nginx tmux wrk ip pgrep systemd-socket-activate systemd-analyze; do \
		command -v $$tool >/dev/null || test -x /usr/sbin/$$tool || missing="$$missing $$tool"; done; \
		test -z "$$missing" || { echo "installing from Debian:$$missing"; \
		apt-get update -qq && $(APT) $(DEBIAN_TOOLS) >/dev/null; }

test: debian-tools $(VENV)/.test
	$(BIN)/python -m pytest -q

# The unit layer only: no processes, no nginx; seconds.
test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -q -m unit

lint: $(VENV)/.test
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	$(BIN)/python -m mypy
	$(BIN)/lint-imports

bench: debian-tools $(VENV)/.test
	$(BIN)/python -m binserve.tools.bench

demo: $(VENV)/.base
	$(BIN)/binserve --module binserve.demo --socket /tmp/binserve-demo.sock --processes 2

clean-venv:
	rm -rf $(VENV)
