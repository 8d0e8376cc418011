"""VOC-layout reader: round trip with DigitScenes, the real VOC2012 layout, every broken-folder error,
and the augmentations."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mess_edge.cli import cli
from mess_edge.data.digitscenes import CLASSES, generate_digitscenes, voc_palette
from mess_edge.data.voc import (IGNORE_INDEX, VOC_CLASSES, VocDataset, normalize, random_scale_crop_flip,
                                resize_pair)
from mess_edge.errors import MessError


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc") / "scenes"
    generate_digitscenes(root, size=64, n_train=4, n_cal=2, n_test=2, seed=11)
    return str(root)


@pytest.fixture
def broken(scenes, tmp_path):
    """A private copy of the generated folder that a test may damage."""
    root = str(tmp_path / "copy")
    shutil.copytree(scenes, root)
    return root


def _write_label(path, label, palette=True):
    im = Image.frombytes("P" if palette else "L", (label.shape[1], label.shape[0]), label.tobytes())
    if palette:
        im.putpalette(voc_palette())
    im.save(path)


def test_round_trip_of_generated_folder(scenes):
    ds = VocDataset(scenes, "train")
    assert ds.ids == ["train_00000", "train_00001", "train_00002", "train_00003"]
    assert len(ds) == 4 and ds.classes == CLASSES and ds.num_classes == 11
    for i in range(len(ds)):
        image, label = ds.load(i)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert label.shape == (64, 64) and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= set(range(11)) | {255}
        with Image.open(ds.label_path(i)) as im:
            assert np.array_equal(label, np.asarray(im))
    stats = ds.check()
    assert stats["n_images"] == 4 and len(stats["pixels_per_class"]) == 11
    assert sum(stats["pixels_per_class"]) + round(stats["ignore_fraction"] * 4 * 64 * 64) == 4 * 64 * 64
    assert VocDataset(scenes, "test", num_classes=11).ids == ["test_00000", "test_00001"]


def test_check_command(scenes):
    res = CliRunner().invoke(cli, ["data", "check", "--data", scenes])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [line.split(":")[0] for line in lines] == ["cal", "test", "train"]
    assert lines[2].startswith("train: 4 images OK in {}; ".format(scenes))


def test_real_voc2012_layout(tmp_path):
    # VOCdevkit/VOC2012 with no classes.txt: the 21 VOC classes; the label PNG's palette colours are
    # irrelevant, its indices are the classes (15 = person is drawn in colour (192, 128, 128)).
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    label = np.zeros((30, 40), np.uint8)
    label[5:20, 10:30] = 15
    label[4, :] = 255
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(str(voc / "JPEGImages" / "2007_000032.jpg"))
    _write_label(str(voc / "SegmentationClass" / "2007_000032.png"), label)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n")
    with Image.open(str(voc / "SegmentationClass" / "2007_000032.png")) as im:
        assert im.convert("RGB").getpixel((15, 10)) == (192, 128, 128)
    ds = VocDataset(tmp_path / "VOCdevkit", "val")
    assert ds.root == str(voc) and ds.classes == VOC_CLASSES and ds.num_classes == 21
    image, got = ds.load(0)
    assert image.shape == (30, 40, 3) and np.array_equal(got, label)
    assert ds.check()["pixels_per_class"][15] == 15 * 20


def test_missing_root_and_split(tmp_path, scenes):
    missing = str(tmp_path / "nope")
    with pytest.raises(MessError) as e:
        VocDataset(missing, "train")
    assert str(e.value) == ("dataset folder not found: {0}; expected a VOC-layout folder (JPEGImages/, "
                            "SegmentationClass/, ImageSets/Segmentation/); try `mess-edge data digitscenes "
                            "--out {0}`".format(missing))
    with pytest.raises(MessError) as e:
        VocDataset(scenes, "val")
    assert str(e.value) == ("split 'val' not found: {} is missing; this dataset has splits: cal, test, "
                            "train".format(os.path.join(scenes, "ImageSets", "Segmentation", "val.txt")))


def test_missing_label_and_image_files(broken):
    os.remove(os.path.join(broken, "SegmentationClass", "train_00002.png"))
    with pytest.raises(MessError) as e:
        VocDataset(broken, "train")
    assert str(e.value).startswith("1 of 4 images in split 'train' have no label file, e.g. {}".format(
        os.path.join(broken, "SegmentationClass", "train_00002.png")))
    os.remove(os.path.join(broken, "JPEGImages", "test_00001.jpg"))
    with pytest.raises(MessError) as e:
        VocDataset(broken, "test")
    assert str(e.value) == "image file missing for id 'test_00001' of split 'test': {}.jpg not found".format(
        os.path.join(broken, "JPEGImages", "test_00001"))


def test_label_out_of_range(broken):
    path = os.path.join(broken, "SegmentationClass", "cal_00001.png")
    label = np.zeros((64, 64), np.uint8)
    label[0, 0], label[0, 1], label[0, 2] = 11, 40, 255
    _write_label(path, label)
    ds = VocDataset(broken, "cal")
    ds.load(0)
    with pytest.raises(MessError) as e:
        ds.load(1)
    assert str(e.value) == "label {} has values [11, 40] out of range; expected 0..10 or 255 (ignore)".format(path)
    with pytest.raises(MessError, match=r"values \[11, 40\] out of range"):
        ds.check()


def test_size_mismatch_corrupt_image_and_rgb_label(broken):
    img_path = os.path.join(broken, "JPEGImages", "train_00001.jpg")
    Image.new("RGB", (50, 40)).save(img_path)
    ds = VocDataset(broken, "train")
    with pytest.raises(MessError) as e:
        ds.load(1)
    assert str(e.value) == ("image/label size mismatch for id 'train_00001': image {} is 40x50, label {} is "
                            "64x64 (H x W); expected equal sizes".format(
                                img_path, os.path.join(broken, "SegmentationClass", "train_00001.png")))
    bad = os.path.join(broken, "JPEGImages", "train_00002.jpg")
    with open(bad, "r+b") as f:
        f.write(b"not a jpeg at all")
    with pytest.raises(MessError, match="^cannot read image {} .*expected a valid JPEG or PNG".format(bad)):
        ds.load(2)
    rgb = os.path.join(broken, "SegmentationClass", "train_00003.png")
    Image.new("RGB", (64, 64)).save(rgb)
    with pytest.raises(MessError) as e:
        ds.load(3)
    assert str(e.value) == ("label {} has mode RGB; expected a palette ('P') or greyscale ('L') PNG whose "
                            "pixel values are class ids".format(rgb))
    with pytest.raises(MessError, match="got num_classes=5; .*classes.txt lists 11 classes; try num_classes=11"):
        VocDataset(broken, "train", num_classes=5)


def test_resize_pair_and_normalize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    label = rng.choice(np.array([0, 3, 255], np.uint8), (20, 30))
    im2, lab2 = resize_pair(image, label, (41, 17))
    assert im2.shape == (41, 17, 3) and lab2.shape == (41, 17) and im2.dtype == lab2.dtype == np.uint8
    assert set(np.unique(lab2).tolist()) <= {0, 3, 255}  # nearest: no blended label values
    x = normalize(np.array([[[255, 0, 124]]], np.uint8))
    assert x.shape == (3, 1, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.485) / 0.229, -0.456 / 0.224, (124 / 255 - 0.406) / 0.225],
                               rtol=1e-6)


def test_random_scale_crop_flip():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 32, 3)).astype(np.uint8)
    label = (np.arange(24 * 32).reshape(24, 32) % 7).astype(np.uint8)
    # Scale 1, crop = image size: identity or a horizontal flip, nothing else.
    flips = set()
    for _ in range(20):
        im, lab = random_scale_crop_flip(image, label, rng, (24, 32), scale_range=(1.0, 1.0))
        flipped = np.array_equal(lab, label[:, ::-1]) and np.array_equal(im, image[:, ::-1])
        assert flipped or (np.array_equal(lab, label) and np.array_equal(im, image))
        flips.add(flipped)
    assert flips == {True, False}
    # Scale 0.5 into a larger crop: padding with the mean colour and label 255 (bottom/right).
    im, lab = random_scale_crop_flip(image, label, rng, (20, 20), scale_range=(0.5, 0.5), flip=False)
    assert im.shape == (20, 20, 3) and lab.shape == (20, 20)
    assert (lab[12:, :] == IGNORE_INDEX).all() and (lab[:, 16:] == IGNORE_INDEX).all()
    assert im[19, 19].tolist() == [124, 116, 104]
    assert set(np.unique(lab[:12, :16]).tolist()) <= set(range(7))
    # Scale 2 then crop: output size fixed, label values preserved.
    im, lab = random_scale_crop_flip(image, label, rng, (16, 16), scale_range=(2.0, 2.0))
    assert im.shape == (16, 16, 3) and set(np.unique(lab).tolist()) <= set(range(7))


def test_data_and_metrics_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import mess_edge.metrics, mess_edge.data.voc, mess_edge.data.digitscenes, mess_edge.data.commands\n"
            "assert 'cv2' not in sys.modules and 'sklearn' not in sys.modules\n"
            "print('ok')")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, env=dict(os.environ, PYTHONPATH=repo),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
