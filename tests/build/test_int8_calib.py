"""INT8 calibration for the TensorRT build without a GPU: the streamed feeds against the in-memory reference,
laziness (nothing computed unless TensorRT asks), cache keys on the calibration set, and the TensorRT
version gate (unknown majors refused in one line)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _fixtures import make_onnx_dir
from mess_edge.build.int8 import _graphs_in_build_order, calibration_images, check_int8_cache, int8_cache_path, \
    record_int8_cache
from mess_edge.errors import MessError
from mess_edge.runtime.calib_data import CalibrationSet, graph_feeds, ort_graph_runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import cv2

    base = tmp_path_factory.mktemp("int8")
    onnx_dir, calib = str(base / "onnx"), base / "calib"
    manifest = make_onnx_dir(onnx_dir)
    calib.mkdir()
    rng = np.random.default_rng(4)
    for i in range(5):
        cv2.imwrite(str(calib / "{}.png".format(i)), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return onnx_dir, str(calib), manifest


def test_streamed_feeds_equal_the_in_memory_reference_and_stay_lazy(setup):
    onnx_dir, calib_dir, manifest = setup
    calls = []
    run_ort = ort_graph_runner(lambda n: os.path.join(onnx_dir, n + ".onnx"))

    def run(name, feed):
        calls.append(name)
        return run_ort(name, feed)

    calib = CalibrationSet(calib_dir, manifest, 4, allow_resize=True)
    lazy = {g["name"]: graph_feeds(manifest, g, calib, run) for g in manifest["graphs"]}
    assert calls == []  # nothing runs until a batch is asked for (every cache hit: no feature pass)
    graphs = [dict(g, _path=os.path.join(onnx_dir, g["file"])) for g in manifest["graphs"]]
    ref = {g["name"]: f for g, f in _graphs_in_build_order(dict(manifest, graphs=graphs),
                                                               calibration_images(calib_dir, manifest, 4))}
    for name, feeds in lazy.items():
        if ref[name] is None:
            assert feeds is None
            continue
        got = list(feeds)
        assert len(got) == len(ref[name]) == 4
        for a, b in zip(got, ref[name]):
            assert sorted(a) == sorted(b)
            for k in a:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5)
    # segment_1, the four heads and final each re-run their prefix per image: compute, not memory, grows
    assert calls.count("segment_0") == 6 * 4 and calls.count("segment_1") == 3 * 4


def test_int8_cache_is_keyed_on_the_calibration_set(setup, tmp_path):
    import cv2

    onnx_dir, calib_dir, manifest = setup
    calib = CalibrationSet(calib_dir, manifest, 4)
    g = manifest["graphs"][0]
    path = int8_cache_path(str(tmp_path), g)
    assert path.endswith("segment_0-{}.cache".format(g["sha256"][:16]))
    assert check_int8_cache(path, calib) is False  # no cache yet
    open(path, "wb").write(b"scales")
    with pytest.raises(MessError, match="was made from no record of its calibration set"):
        check_int8_cache(path, calib)
    record_int8_cache(path, calib)
    assert check_int8_cache(path, calib) is True
    assert json.load(open(path + ".json"))["n_images"] == 4
    fewer = CalibrationSet(calib_dir, manifest, 3)
    assert fewer.key() != calib.key()
    with pytest.raises(MessError, match=r"INT8 cache .* was made from calibration set .*\(4 images.*got "
                                        r"--calib-data .*\(3 images.*try --recalibrate"):
        check_int8_cache(path, fewer)
    other = tmp_path / "other"
    other.mkdir()
    for i, f in enumerate(sorted(os.listdir(calib_dir))[:4]):
        im = cv2.imread(os.path.join(calib_dir, f))
        cv2.imwrite(str(other / f), 255 - im if i == 0 else im)  # one image changed, same names and count
    changed = CalibrationSet(str(other), manifest, 4)
    assert changed.key() != calib.key()
    with pytest.raises(MessError, match="expected the same images and preprocessing"):
        check_int8_cache(path, changed)
    assert check_int8_cache(path, changed, recalibrate=True) is False and not os.path.exists(path)


def test_unknown_tensorrt_major_is_refused_in_one_line(setup, tmp_path):
    from mess_edge.runtime.trt_runner import NEWEST_MAJOR, check_trt_version

    for v in ("8.5.2.2", "8.6.1", "10.3.0", "11.4.0.106"):
        check_trt_version(v)
    with pytest.raises(MessError, match=r"got TensorRT 12.0.1; expected 8.5 to 11.x"):
        check_trt_version("12.0.1")
    with pytest.raises(MessError, match=r"got TensorRT 8.2.1; expected >= 8.5"):
        check_trt_version("8.2.1")
    assert NEWEST_MAJOR == 11
    # the command line, with a tensorrt module that says it is 12.0 (the real one is absent here)
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "tensorrt.py").write_text("__version__ = '12.0.0'\n")
    env = dict(os.environ, PYTHONPATH=str(fake))
    r = subprocess.run([sys.executable, "-m", "mess_edge.cli", "build", setup[0], "--backend", "trt", "--out",
                        str(tmp_path / "e")], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: got TensorRT 12.0.0; expected 8.5 to 11.x")
    assert not os.path.exists(str(tmp_path / "e"))
