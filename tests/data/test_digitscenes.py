"""DigitScenes: determinism, disjoint digit pools, label values, foreground statistics, CLI, video."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mess_edge.cli import cli
from mess_edge.data.digitscenes import (CLASSES, digit_pools, foreground_fraction, generate_digitscenes,
                                        image_difficulty, image_rng, voc_palette, write_split_video)
from mess_edge.data.scene_render import render_scene
from mess_edge.errors import MessError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(size=64, n_train=5, n_cal=3, n_test=3)


def _hashes(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "a"
    summary = generate_digitscenes(root, seed=0, **SMALL)
    return str(root), summary


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    root, _ = small
    again = tmp_path / "b"
    generate_digitscenes(again, seed=0, **SMALL)
    first, second = _hashes(root), _hashes(str(again))
    assert len(first) == 2 * 11 + 3 + 2  # jpg + png per image, 3 split files, classes.txt, digitscenes.json
    assert first == second
    other = tmp_path / "c"
    generate_digitscenes(other, seed=1, **SMALL)
    third = _hashes(str(other))
    images = [k for k in first if k.startswith("JPEGImages")]
    assert sorted(third) == sorted(first)
    assert all(first[k] != third[k] for k in images)
    # No temporary folder is left beside the outputs.
    assert sorted(os.listdir(str(tmp_path))) == ["b", "c"]


def test_layout_palette_and_label_values(small):
    root, summary = small
    with open(os.path.join(root, "classes.txt")) as f:
        assert f.read().split("\n")[:-1] == ["background", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    for split, n in (("train", 5), ("cal", 3), ("test", 3)):
        with open(os.path.join(root, "ImageSets", "Segmentation", split + ".txt")) as f:
            ids = f.read().split()
        assert ids == ["{}_{:05d}".format(split, i) for i in range(n)]
    seen = set()
    for i in range(5):
        with Image.open(os.path.join(root, "SegmentationClass", "train_{:05d}.png".format(i))) as im:
            assert im.mode == "P" and im.size == (64, 64)
            assert im.getpalette()[:768] == voc_palette()
            seen.update(np.unique(np.asarray(im)).tolist())
        with Image.open(os.path.join(root, "JPEGImages", "train_{:05d}.jpg".format(i))) as im:
            assert im.mode == "RGB" and im.size == (64, 64) and im.format == "JPEG"
    assert seen <= set(range(11)) | {255}
    assert 0 in seen and len(seen & set(range(1, 11))) >= 2 and 255 in seen
    assert voc_palette()[3 * 255:3 * 256] == [224, 224, 192]
    with open(os.path.join(root, "digitscenes.json")) as f:
        meta = json.load(f)
    assert meta["params"] == dict(SMALL, seed=0)
    assert meta["classes"] == CLASSES and meta["summary"]["counts"] == {"train": 5, "cal": 3, "test": 3}


def test_splits_use_disjoint_digit_samples(small):
    root, summary = small
    pools = digit_pools()
    assert sum(len(v) for v in pools.values()) == 1797
    assert len(pools["train"]) == 1078
    train, cal, test = (set(pools[k]) for k in ("train", "cal", "test"))
    assert not (train & cal) and not (train & test) and not (cal & test)
    with open(os.path.join(root, "digitscenes.json")) as f:
        assert json.load(f)["digit_pools"] == pools
    used = summary["digits_used"]
    assert used["train"] and set(used["train"]) <= train
    assert set(used["cal"]) <= cal and set(used["test"]) <= test


def test_foreground_fraction_at_size_128(tmp_path):
    summary = generate_digitscenes(tmp_path / "fg", size=128, n_train=40, n_cal=10, n_test=10, seed=3)
    fracs = []
    for split in ("train", "cal", "test"):
        for i in range(summary["counts"][split]):
            path = str(tmp_path / "fg" / "SegmentationClass" / "{}_{:05d}.png".format(split, i))
            with Image.open(path) as im:
                fracs.append(foreground_fraction(np.asarray(im)))
    assert len(fracs) == 60
    assert 0.18 <= np.mean(fracs) <= 0.30
    assert summary["fg_mean"] == pytest.approx(np.mean(fracs), abs=1e-4)
    assert np.percentile(fracs, 5) > 0.03 and np.percentile(fracs, 95) < 0.5


def test_easy_images_are_easy():
    import cv2
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pool = digit_pools()["train"]
    for i in range(20):
        img, lab, used = render_scene(np.random.default_rng(i), 128, bunch.images / 16.0, bunch.target, pool,
                                      difficulty=0.05)
        assert 1 <= len(used) <= 2
        # Plain background (no gradient, texture, clutter or noise) and high contrast with the digits.
        # Away from the anti-aliased digit edges (coverage <= 0.25 keeps label 0 but mixes colour).
        inner = cv2.erode((lab == 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        bg = img[inner].astype(np.float64)
        fg = img[(lab > 0) & (lab < 255)].astype(np.float64)
        assert bg.std(0).max() < 0.5
        lum = np.array([0.299, 0.587, 0.114])
        assert abs(fg.mean(0) @ lum - bg.mean(0) @ lum) > 0.5 * 255
        assert foreground_fraction(lab) > 0.04


def test_image_difficulty_is_the_one_the_generator_drew(small):
    from sklearn.datasets import load_digits

    root, _ = small
    bunch = load_digits()
    pools = digit_pools()
    ds = []
    for i in range(SMALL["n_test"]):
        d = image_difficulty(0, "test", i)
        drawn = render_scene(image_rng(0, "test", i), 64, bunch.images / 16.0, bunch.target, pools["test"])
        forced = render_scene(image_rng(0, "test", i), 64, bunch.images / 16.0, bunch.target, pools["test"],
                              difficulty=d)
        assert np.array_equal(drawn[0], forced[0]) and np.array_equal(drawn[1], forced[1])
        written = np.array(Image.open(os.path.join(root, "SegmentationClass", "test_{:05d}.png".format(i))))
        assert np.array_equal(written, drawn[1])  # the generator's own stream
        ds.append(d)
    assert len(set(ds)) == len(ds) and all(0 <= d < 1 for d in ds)
    assert image_difficulty(0, "test", 0) != image_difficulty(1, "test", 0) != image_difficulty(0, "cal", 0)


def test_cli_generate_up_to_date_and_refusals(tmp_path):
    out = str(tmp_path / "cli")
    args = ["data", "digitscenes", "--out", out, "--size", "64", "--n-train", "2", "--n-cal", "1",
            "--n-test", "1", "--seed", "5"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "2 train / 1 cal / 1 test images of 64x64 px" in res.output
    assert "mean foreground fraction" in res.output
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0 and "is up to date (same parameters); nothing written" in res.output
    # Through the real console entry point: one-line error, exit status 2.
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "mess_edge.cli"] + args[:-1] + ["6"], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: output folder {} holds DigitScenes made with other parameters: got "
                                   "seed=6 (folder has 5); try another --out, or delete the folder to "
                                   "regenerate".format(out))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MessError, match="exists and is not empty; expected a new or empty folder"):
        generate_digitscenes(foreign, size=64, n_train=1, n_cal=1, n_test=1)
    with pytest.raises(MessError, match=r"got --size 16; expected 32\.\.1024 pixels"):
        generate_digitscenes(tmp_path / "x", size=16)
    with pytest.raises(MessError, match="got --n-cal 0; expected at least 1 image per split"):
        generate_digitscenes(tmp_path / "x", n_cal=0)
    # An existing empty folder is fine.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate_digitscenes(empty, size=64, n_train=1, n_cal=1, n_test=1)["up_to_date"] is False


def test_split_video(small, tmp_path):
    import cv2

    root, _ = small
    out = str(tmp_path / "test.mp4")
    assert write_split_video(root, "test", out, fps=5, repeat=2) == 6
    cap = cv2.VideoCapture(out)
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (64, 64, 3)
        frames += 1
    cap.release()
    assert frames == 6
    res = CliRunner().invoke(cli, ["data", "video", "--data", root, "--split", "cal", "--out", out])
    assert res.exit_code == 0 and "wrote 3 frames at 10 fps" in res.output
