"""The device side imports and runs without torch: a subprocess makes torch unimportable first."""

import os
import subprocess
import sys

import pytest

BLOCK = "import sys; sys.modules['torch'] = None\n"
DEVICE_MODULES = [
    "mess_edge.cli", "mess_edge.errors", "mess_edge.artifacts", "mess_edge.metrics", "mess_edge.confidence",
    "mess_edge.data.voc", "mess_edge.data.digitscenes", "mess_edge.data.commands",
    "mess_edge.runtime", "mess_edge.runtime.runner", "mess_edge.runtime.ort_runner", "mess_edge.runtime.trt_runner",
    "mess_edge.runtime.fuse", "mess_edge.runtime.device", "mess_edge.runtime.calib_data",
    "mess_edge.quantize", "mess_edge.quantize.quantizer", "mess_edge.quantize.commands",
    "mess_edge.calibrate.engine_memo",
    "mess_edge.build", "mess_edge.build.builder", "mess_edge.build.int8", "mess_edge.build.engine_set",
    "mess_edge.build.commands",
    "mess_edge.profile", "mess_edge.profile.latency_table", "mess_edge.profile.timing", "mess_edge.profile.bench",
    "mess_edge.profile.instance_bench", "mess_edge.profile.commands",
    "mess_edge.run", "mess_edge.run.chain", "mess_edge.run.chain_backends", "mess_edge.run.capture",
    "mess_edge.run.preprocess", "mess_edge.run.overlay", "mess_edge.run.sink", "mess_edge.run.stats",
    "mess_edge.run.loop", "mess_edge.run.present", "mess_edge.run.commands",
    "mess_edge.search", "mess_edge.search.commands", "mess_edge.search.driver", "mess_edge.search.optimizer",
    "mess_edge.model.commands", "mess_edge.train.commands", "mess_edge.export.commands", "mess_edge.calibrate.commands",
]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def _run(code):
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("module", DEVICE_MODULES)
def test_device_module_imports_without_torch(module):
    r = _run("import importlib; importlib.import_module({!r}); "
             "assert sys.modules.get('torch') is None".format(module))
    assert r.returncode == 0, r.stderr[-2000:]


def test_cli_help_without_torch():
    r = _run("from mess_edge.cli import main; main(['--help'])")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("info", "data"):
        if name in r.stdout:
            break
    else:
        pytest.fail("no subcommands listed: " + r.stdout)


def test_torch_really_blocked():
    r = _run("import torch")
    assert r.returncode != 0 and "torch" in r.stderr


def test_quantize_runs_without_torch(tmp_path):
    """INT8 and FP16 quantization is device side: onnxruntime's tools, the runtime's Preprocessor, no torch."""
    import onnxruntime

    if tuple(int(v) for v in onnxruntime.__version__.split(".")[:2]) < (1, 20):
        # Seen with 1.19.2 (the newest for Python 3.8): quantize_static loses the temporary external-data file
        # of the augmented calibration graph; the command fails with one line naming it. Not yet worked around.
        pytest.skip("onnxruntime {} < 1.20: its quantize_static fails on these graphs".format(onnxruntime.__version__))
    code = ("sys.path.insert(0, 'tests'); import numpy as np, cv2, os; from _fixtures import make_onnx_dir; "
            "make_onnx_dir({d!r}); os.makedirs({c!r}); "
            "[cv2.imwrite(os.path.join({c!r}, '%d.png' % i), np.full((32, 32, 3), 40 * i, np.uint8)) for i in range(3)]; "
            "from mess_edge.cli import main; "
            "main(['quantize', {d!r}, '--precision', 'int8', '--calib-data', {c!r}, '--out', {q!r}])").format(
        d=str(tmp_path / "onnx"), c=str(tmp_path / "calib"), q=str(tmp_path / "q"))
    r = _run(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote 10 graphs at int8" in r.stdout

