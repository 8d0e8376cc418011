"""calibrate --engines: the memo computed by an FP32 engine folder (no torch) against the torch memo of the same
checkpoint, and on an INT8 folder of the same export (its precision recorded, its accuracy close)."""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def deployed(tiny_ckpts, scenes, tmp_path_factory):
    from mess_edge.build.builder import build_engines
    from mess_edge.export.exporter import export_checkpoint
    from mess_edge.quantize.quantizer import quantize_folder

    base = tmp_path_factory.mktemp("engine-memo")
    onnx_dir = str(base / "onnx")
    export_checkpoint(tiny_ckpts[1], onnx_dir, log=lambda *a: None)
    q_dir = str(base / "onnx-int8")
    quantize_folder(onnx_dir, "int8", q_dir, scenes)
    return {p: build_engines(d, "ort", out_dir=str(base / p)) for p, d in (("fp32", onnx_dir), ("int8", q_dir))}


def test_fp32_engine_memo_matches_the_torch_memo(deployed, tiny_ckpts, scenes):
    from mess_edge.calibrate.engine_memo import memoise_engines
    from mess_edge.calibrate.memoise import memoise

    ref = memoise(tiny_ckpts[1], scenes, "cal", progress=False)
    got = memoise_engines(deployed["fp32"], scenes, "cal", progress=False)
    assert got.meta["precision"] == "fp32" and got.meta["source"] == "engines"
    assert got.n_images == ref.n_images == 16 and got.n_heads == ref.n_heads
    np.testing.assert_array_equal(got.head_exit, ref.head_exit)
    np.testing.assert_array_equal(got.head_arch, ref.head_arch)
    # confusions: equal up to a few pixels whose bilinear upsample ties differently (fp32 rounding)
    diff = np.abs(got.confusion - ref.confusion).sum() / 2
    assert diff <= 1e-3 * ref.confusion.sum(), diff
    np.testing.assert_allclose(got.head_miou(), ref.head_miou(), atol=2e-3)
    H = ref.n_heads
    np.testing.assert_array_equal(got.n_pixels[:H], ref.n_pixels[:H])
    for hist in ("hist_edge", "hist_raw"):  # histograms: per image at most a few pixels in another bin
        moved = np.abs(getattr(got, hist)[:H].astype(np.int64) - getattr(ref, hist)[:H]).sum(-1) / 2
        assert moved.max() <= 0.01 * ref.n_pixels[:H].max(), (hist, moved.max())
    np.testing.assert_allclose(got.mean_conf[:H], ref.mean_conf[:H], atol=1e-4)


def test_int8_engine_memo_through_the_command_line(deployed, scenes, tmp_path):
    from mess_edge.search.memo import load_memo

    out = str(tmp_path / "memo.npz")
    cmd = [sys.executable, "-m", "mess_edge.cli", "calibrate", "--engines", deployed["int8"], "--data", scenes,
           "--out", out]
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    memo = load_memo(out)
    assert memo.meta["precision"] == "int8" and memo.meta["calibration"]["n_images"] == 16
    fp32 = load_memo_of(deployed["fp32"], scenes)
    assert np.max(np.abs(memo.head_miou() - fp32.head_miou())) < 0.1  # tiny model, 16 images: loose
    r = subprocess.run([sys.executable, "-m", "mess_edge.cli", "calibrate", "--data", scenes], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: got neither; expected exactly one of CKPT or --engines")


def load_memo_of(engine_dir, scenes):
    from mess_edge.calibrate.engine_memo import memoise_engines

    return memoise_engines(engine_dir, scenes, "cal", progress=False)
