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
    "mess_edge.runtime.build", "mess_edge.runtime.calib", "mess_edge.runtime.engines", "mess_edge.runtime.profile",
    "mess_edge.runtime.bench", "mess_edge.runtime.speedup", "mess_edge.runtime.commands", "mess_edge.runtime.chain",
    "mess_edge.runtime.chain_backends", "mess_edge.runtime.capture", "mess_edge.runtime.camera",
    "mess_edge.runtime.stats", "mess_edge.runtime.run_commands", "mess_edge.runtime.present",
    "mess_edge.search", "mess_edge.search.commands",
    "mess_edge.model.commands", "mess_edge.train.commands", "mess_edge.export.commands",
]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _existing(mods):
    out = []
    for m in mods:
        rel = m.replace(".", os.sep)
        if os.path.exists(os.path.join(ROOT, rel + ".py")) or os.path.isdir(os.path.join(ROOT, rel)):
            out.append(m)
    return out


def _run(code):
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("module", _existing(DEVICE_MODULES))
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
