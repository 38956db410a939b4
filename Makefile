# Two commands: `make run` (the main job) and `make test` (the test suite). Each sets up .venv if missing.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.lipzoo-installed

.PHONY: run test test-slow setup bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(VPY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(VPY) -m pip install -q -e ".[hub,dev]"
	$(VPY) -m pip install -q --no-deps "torchattacks==3.5.1"  # lipzoo[attack]; its requests pin clashes, see pyproject
	@touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VPY) -m lipzoo.cli run

test: $(STAMP)
	$(VPY) -m pytest

test-slow: $(STAMP)
	$(VPY) -m pytest -m slow -q -o addopts="" --timeout=7200

bench: $(STAMP)
	$(VPY) scripts/bench.py all

clean-venv:
	rm -rf $(VENV)
