# `make demo` trains a tiny model on bundled photos and writes demo-out/sheet_<task>.png.
# `make test` runs the test suite. Both create the virtual environment .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test venv clean

$(BIN)/palette: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/palette

demo: venv
	$(BIN)/palette demo --out demo-out

test: venv
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) demo-out .pytest_cache
