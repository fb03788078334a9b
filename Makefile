# `make test` installs what the tests need (nginx and tmux from Debian when missing, as root;
# the Python packages from PyPI) and runs them. `.ci/run` calls exactly this.
PYTHON ?= python3

.PHONY: test lint bench demo

test:
	@(command -v nginx >/dev/null || test -x /usr/sbin/nginx) && command -v tmux >/dev/null \
		&& command -v wrk >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx tmux wrk >/dev/null)
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

bench:
	@command -v nginx >/dev/null && command -v wrk >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null)
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -m binserve.tools.bench

demo:
	binserve --module binserve.demo --socket /tmp/binserve-demo.sock --processes 2
