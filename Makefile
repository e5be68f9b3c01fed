# `make demo` samples the packaged demo model on held-out photos and writes demo-out/sheet_<task>.png.
# `make test` runs the test suite. Both create the virtual environment .venv first.
# `make test-fast` runs the unit tests only, without the ones that launch processes or a browser (integration) or
# take over ~10 s each (slow): under 2 minutes on a 2-core CPU.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# the demo needs only the extra that ships its photos; the tests need that extra too (it is part of `test`)
$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.demo-installed

venv: $(VENV)/.test-installed

demo: $(VENV)/.demo-installed
	$(BIN)/palette demo --out demo-out

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -n 2 -q

test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest -n 2 -q -m "not integration and not slow"

clean:
	rm -rf $(VENV) demo-out .pytest_cache
