# The README's two commands: `make demo` (set up + run the pipeline on the embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: setup demo test clean

# torch is installed first and pinned: on the development machines torch==2.13.0 (CPU) lies on local disk,
# while an unpinned torch would pull a multi-GB CUDA build.
$(BIN)/mess-edge: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[train,ort,camera,dev]"
	touch $@

setup: $(BIN)/mess-edge

demo: setup
	$(BIN)/mess-edge demo --out $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_DIR)
