"""`mess-edge bench --instance`: the interleaved timing harness against plain loops, and an instance's measured
speedup on small real engines and a small VOC folder, without torch."""

import collections
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from _fixtures import make_onnx_dir, write_split_instance
from mess_edge.errors import MessError
from mess_edge.metrics import confusion_matrix, miou
from mess_edge.build.builder import build_engines
from mess_edge.run.chain import ReferenceChain
from mess_edge.build.engine_set import load_engines
from mess_edge.profile.instance_bench import bench_instance, format_instance_bench, interleaved, load_frames

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
E0, E1 = "head_e0_c1b1r0h0", "head_e1_c1b1r0h0"


def test_interleaved_alternates_and_scores_like_a_plain_loop():
    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((1, 3, 4, 4)).astype(np.float32) for _ in range(6)]
    labels = [rng.integers(0, 3, (4, 4)).astype(np.uint8) for _ in range(6)]
    labels[0][0, 0] = 255  # ignored
    calls = []

    def path(name, shift):
        def fn(i, x):
            calls.append((i, name))
            return (labels[i].astype(np.int32) + shift) % 3 if shift else np.where(labels[i] == 255, 0, labels[i]), (
                "g{}".format(i % 2) if name == "a" else None)
        return fn

    paths = collections.OrderedDict([("a", path("a", 0)), ("b", path("b", 1))])
    r = interleaved(paths, frames, labels, 3, reps=2, warmup=2)
    timed = calls[4:]  # after 2 warm-up frames x 2 paths
    assert timed[:4] == [(0, "a"), (0, "b"), (1, "b"), (1, "a")] and len(timed) == 2 * 6 * 2
    assert timed[12:14] == [(0, "b"), (0, "a")]  # the second pass starts the other way round
    for name, shift in (("a", 0), ("b", 1)):
        conf = sum(confusion_matrix(np.where(l == 255, 0, l) if not shift else (l.astype(np.int32) + 1) % 3, l, 3)
                   for l in labels)
        assert r[name]["miou"] == pytest.approx(100 * miou(conf)) and r[name]["n"] == 12
        assert len(r[name]["ms"]) == 6 and r[name]["median_ms"] <= max(r[name]["ms"]) * 10
    assert r["a"]["miou"] == 100.0 and r["a"]["exits"] == {"g0": 3, "g1": 3} and r["b"]["exits"] is None
    with pytest.raises(MessError, match="got no frames to time"):
        interleaved(paths, [], None, 3)


def test_interleaved_blocks_run_each_path_over_a_block_in_a_row():
    frames = [np.full((1, 1, 2, 2), i, np.float32) for i in range(5)]
    labels = [np.full((2, 2), i % 3, np.uint8) for i in range(5)]
    calls = []

    def path(name):
        def fn(i, x):
            assert x[0, 0, 0, 0] == i  # the frame the index names
            calls.append((i, name))
            return np.full((2, 2), i % 3 if name == "a" else 0, np.int32), None
        return fn

    paths = collections.OrderedDict([("a", path("a")), ("b", path("b"))])
    r = interleaved(paths, frames, labels, 3, reps=2, warmup=0, block=2)
    a, b = [(i, "a") for i in range(5)], [(i, "b") for i in range(5)]
    # blocks [0, 1] [2, 3] [4]: a then b, b then a, a then b; the second pass starts the other way round
    assert calls == (a[0:2] + b[0:2] + b[2:4] + a[2:4] + a[4:] + b[4:]
                     + b[0:2] + a[0:2] + a[2:4] + b[2:4] + b[4:] + a[4:])
    framewise = interleaved(paths, frames, labels, 3, reps=1, warmup=0)
    for name in paths:  # the order changes the timings only
        assert r[name]["miou"] == framewise[name]["miou"] and r[name]["n"] == 10 and len(r[name]["ms"]) == 5
    assert r["a"]["miou"] == 100.0
    for bad in (0, 2.5, None):
        with pytest.raises(MessError, match="got block {!r}; expected a whole number of frames >= 1".format(bad)):
            interleaved(paths, frames, labels, 3, block=bad)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(engines, instance path, instance dict, VOC folder of 8 labelled 32x32 scenes, video of them)."""
    base = tmp_path_factory.mktemp("speedup")
    make_onnx_dir(str(base / "onnx"), widths=(8, 16, 16), num_classes=5)
    engines = load_engines(build_engines(str(base / "onnx"), "ort", out_dir=str(base / "eng")))
    voc = base / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    writer = cv2.VideoWriter(str(base / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (32, 32))
    ids = []
    for i in range(8):
        label = np.zeros((32, 32), np.uint8)
        label[4 + i:20 + i, 6:22] = 1 + i % 4
        image = (rng.integers(0, 60, (32, 32, 3)) + 150 * (label[..., None] > 0)).astype(np.uint8)
        Image.fromarray(image).save(str(voc / "JPEGImages" / "im{}.jpg".format(i)), quality=95)
        Image.fromarray(label, mode="L").save(str(voc / "SegmentationClass" / "im{}.png".format(i)))
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        ids.append("im{}".format(i))
    writer.release()
    (voc / "ImageSets/Segmentation/test.txt").write_text("\n".join(ids) + "\n")
    path = str(base / "instance.json")
    inst = write_split_instance(engines, load_frames(engines, data=str(voc))[0], path, (E0, E1), cost_unit="ms",
                                expected_cost=1.0, final_only_cost=1.5)  # about half the frames leave at E0
    return engines, path, inst, str(voc), str(base / "clip.mp4")


def test_bench_instance_matches_the_reference_chain(setup):
    engines, path, inst, voc, _ = setup
    r = bench_instance(engines.dir, path, data=voc, images=8, reps=2)
    frames, labels = load_frames(engines, data=voc)
    conf = {k: np.zeros((5, 5), np.int64) for k in ("instance", "final")}
    exits = collections.Counter()
    with ReferenceChain(engines, inst) as ref, ReferenceChain(engines, dict(inst, setting="final-only")) as fin:
        for x, lab in zip(frames, labels):
            got = ref.run(x)
            exits[got.graph] += 1
            conf["instance"] += confusion_matrix(got.labels, lab, 5)
            conf["final"] += confusion_matrix(fin.run(x).labels, lab, 5)
    c = r["configs"]
    assert list(c) == ["instance", "final-only", "monolithic"] and all(v["n"] == 16 for v in c.values())
    assert c["instance"]["exits"] == dict(exits) and 0 < exits[E0] < 8
    assert c["instance"]["miou"] == pytest.approx(100 * miou(conf["instance"]))
    assert c["final-only"]["miou"] == pytest.approx(100 * miou(conf["final"]))
    assert r["baseline"] in ("final-only", "monolithic") and r["frames"] == 8 and r["predicted_speedup"] == 1.5
    assert r["speedup"] == pytest.approx(c[r["baseline"]]["mean_ms"] / c["instance"]["mean_ms"])
    assert r["miou_drop_pp"] == pytest.approx(c[r["baseline"]]["miou"] - c["instance"]["miou"])
    assert "speedup {:.2f}x over {}".format(r["speedup"], r["baseline"]) in format_instance_bench(r)
    assert r["block"] == 25 and "8 frames x 2 passes, interleaved in blocks of 25 frames" in format_instance_bench(r)
    fo = r["configs"]["final-only"]["mean_ms"] / r["configs"]["instance"]["mean_ms"]
    assert r["speedup_vs_final_only"] == pytest.approx(fo)
    if r["baseline"] == "monolithic":  # the prediction is against the chained final-only path: said beside it
        assert "over the chained final-only path, measured {:.2f}x".format(fo) in format_instance_bench(r)


def test_bench_instance_on_a_video_and_its_errors(setup):
    engines, path, _, voc, video = setup
    r = bench_instance(engines.dir, path, source=video, images=100, reps=1)
    assert r["frames"] == 8 and r["miou_drop_pp"] is None and r["configs"]["instance"]["miou"] is None
    with pytest.raises(MessError, match="got both --data and --source; expected exactly one"):
        bench_instance(engines.dir, path, data=voc, source=video)
    with pytest.raises(MessError, match="got neither --data nor --source"):
        bench_instance(engines.dir, path)
    with pytest.raises(MessError, match="got --deadline-ms with a input-dependent instance; expected an anytime"):
        bench_instance(engines.dir, path, data=voc, deadline_ms=5.0)


def test_bench_instance_command_without_torch(setup, tmp_path):
    engines, path, _, voc, _ = setup
    out = str(tmp_path / "b.json")

    def cli(*args):
        code = ("import sys; sys.modules['torch'] = None\nfrom mess_edge.cli import main\nmain({!r})\n").format(
            [str(a) for a in args])
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)

    r = cli("bench", engines.dir, "--instance", path, "--data", voc, "--images", 4, "--reps", 1, "--threads", 1,
            "--block", 1, "--json", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "interleaved frame by frame" in r.stdout and json.load(open(out))["frames"] == 4
    assert json.load(open(out))["block"] == 1
    r = cli("bench", engines.dir, "--data", voc)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1] == (
        "error: got --data/--source without --instance; expected --instance INSTANCE.json with them")
