"""Device-side modules stay valid Python 3.8 (JetPack 5's Python): vermin's strict check on every one."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_PATHS = ["mess_edge/runtime", "mess_edge/build", "mess_edge/profile", "mess_edge/run", "mess_edge/search", "mess_edge/data", "mess_edge/metrics.py",
                "mess_edge/confidence.py", "mess_edge/errors.py", "mess_edge/artifacts.py", "mess_edge/cli.py",
                "mess_edge/calibrate/commands.py", "mess_edge/train/commands.py", "mess_edge/export/commands.py",
                "mess_edge/progress.py", "mess_edge/__init__.py"]


def _vermin():
    import sys

    here = os.path.join(os.path.dirname(sys.executable), "vermin")  # the venv's bin, not the base Python's
    return here if os.path.exists(here) else shutil.which("vermin")


def test_device_modules_need_at_most_python_3_8():
    vermin = _vermin()
    if vermin is None:
        pytest.skip("vermin is not installed (pip install -e .[dev])")
    r = subprocess.run([vermin, "--target=3.8-", "--no-tips", "--violations", "--eval-annotations",
                        "--backport", "dataclasses", "--backport", "typing"] + DEVICE_PATHS,
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
