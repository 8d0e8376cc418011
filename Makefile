# The README's two commands: `make demo` (set up + run the pipeline on the embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: setup demo demo-scratch demo-checkpoint test clean

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

# Everything from scratch, stage 1 included (about 25 minutes more on 2 CPU cores).
demo-scratch: setup
	$(BIN)/mess-edge demo --out $(DEMO_DIR) --from-scratch

# Regenerates the shipped stage-1 checkpoint (mess_edge/assets/cpu-mbv2-stage1.pt) with the recipe in
# mess_edge/demo.py; records command, seed, data parameters, time and metrics beside it.
demo-checkpoint: setup
	$(BIN)/python -m mess_edge.assets.make_checkpoint

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_DIR)
