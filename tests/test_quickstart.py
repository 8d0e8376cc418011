"""The README's quick start, scaled down through the demo's documented options, run from the shell."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_pipeline_from_the_shell(tmp_path):
    from mess_edge.demo import DEMO_MODELS

    if not os.path.isfile(DEMO_MODELS["cpu-effl0"][0]):  # the default model's
        pytest.skip("the shipped stage-1 checkpoint is missing (make demo-checkpoint)")
    out = tmp_path / "demo"
    cli = os.path.join(os.path.dirname(sys.executable), "mess-edge")
    cmd = "{} demo --out {} --n-train 48 --n-cal 24 --n-test 24 --stage2-epochs 1 --max-frames 12 --profile-seconds 0.02".format(
        cli, out)
    r = subprocess.run(cmd, shell=True, cwd=str(tmp_path), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "=== mess-edge demo report" in r.stdout
    assert "test mIoU per exit" in r.stdout and "instance (input-dependent)" in r.stdout
    for rel in ("data/ImageSets/Segmentation/test.txt", "stage2.pt", "calibrate/memo.npz", "onnx/manifest.json",
                "engines/cpu-ort/engine.json", "engines/cpu-ort/lut.json", "instance.json", "overlay.mp4",
                "run_stats.json", "pareto.png"):
        assert (out / rel).exists(), rel
    stats = json.loads((out / "run_stats.json").read_text())
    assert stats["frames"] == 12
    inst = json.loads((out / "instance.json").read_text())
    assert inst["setting"] == "input-dependent" and inst["cost_unit"] == "ms"
    bench = json.loads((out / "bench_instance.json").read_text())
    assert bench["frames"] == 24 and bench["reps"] == 3 and set(bench["configs"]) == {"instance", "final-only",
                                                                                       "monolithic"}
    assert "measured {:.3f} vs".format(bench["configs"]["instance"]["mean_ms"]) in r.stdout
    assert bench["block"] == 25
    assert "speedup {:.2f}x, interleaved in blocks of 25 frames on 24 test images".format(
        bench["speedup"]) in r.stdout

    import cv2

    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 12  # a playable video with every processed frame
