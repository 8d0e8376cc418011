# The README's two commands: `make demo` (set up + run the pipeline on the embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: setup demo demo-scratch demo-checkpoint test test-py38 clean

# torch is installed first and pinned: on the development machines torch==2.13.0 (CPU) lies on local disk,
# while an unpinned torch would pull a multi-GB CUDA build.
$(BIN)/mess-edge: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[train,ort,opencv,imagenet,dev]"
	touch $@

setup: $(BIN)/mess-edge

demo: setup
	$(BIN)/mess-edge demo --out $(DEMO_DIR)

# Everything from scratch, stage 1 included (about 13 minutes more on 2 CPU cores; cpu-effl0 from ImageNet weights).
demo-scratch: setup
	$(BIN)/mess-edge demo --out $(DEMO_DIR) --from-scratch

# Regenerates a demo model's shipped stage-1 checkpoint (mess_edge/assets/$(DEMO_MODEL)-stage1.pt) with its recipe
# in mess_edge/demo.py; records command, seed, data parameters, time and metrics beside it.
DEMO_MODEL ?= cpu-effl0
demo-checkpoint: setup
	$(BIN)/python -m mess_edge.assets.make_checkpoint $(DEMO_MODEL)

test: setup
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-py38

# The device side on JetPack 5's Python (3.8) with numpy 1.x and no torch: its tests run in a second venv.
# (pyenv's shim answers `command -v python3.8` even when it cannot run it: try each candidate for real)
PY38 ?= $(shell for p in /root/.pyenv/versions/3.8*/bin/python3.8 python3.8; do \
	  $$p -c 'import sys' >/dev/null 2>&1 && { command -v $$p; break; }; done)
DEVICE_TESTS = tests/test_metrics.py tests/data/test_voc.py tests/search/test_search_core.py \
	tests/search/test_search_random.py tests/search/test_search_files.py tests/runtime/test_runner_ort.py \
	tests/build/test_build_profile.py tests/runtime/test_trt_backend.py tests/run/test_chain.py tests/run/test_run.py \
	tests/profile/test_instance_bench.py tests/test_no_torch.py

test-py38:
	@if [ -z "$(PY38)" ]; then echo "python3.8 not found: the Python 3.8 / numpy 1.x device check is skipped"; else \
	  if [ ! -x .venv38/bin/pytest ]; then \
	    $(PY38) -m venv .venv38 && .venv38/bin/python -m pip install -q --upgrade pip && \
	    .venv38/bin/python -m pip install -q "numpy<2" onnxruntime onnx opencv-python-headless pillow click \
	      scikit-learn matplotlib pytest pytest-timeout && .venv38/bin/python -m pip install -q --no-deps -e . ; fi && \
	  .venv38/bin/python -c "import sys, numpy; print('device tests on Python', sys.version.split()[0], 'numpy', numpy.__version__)" && \
	  .venv38/bin/python -m pytest -q -p no:cacheprovider $(DEVICE_TESTS); fi

clean:
	rm -rf $(VENV) .venv38 $(DEMO_DIR)
