"""DigitScenes: a small, real-pixel segmentation dataset made from scikit-learn's handwritten digits.

Each scene is composed from the 1,797 real 8x8 handwritten digits of ``sklearn.datasets.load_digits``
(values 0..16) and written in the PASCAL VOC layout, so every stage that reads VOC reads it unchanged:

    DIR/JPEGImages/<id>.jpg                 RGB, JPEG quality 95
    DIR/SegmentationClass/<id>.png          palette PNG (mode "P", VOC palette), pixel value = class id
    DIR/ImageSets/Segmentation/{train,cal,test}.txt
    DIR/classes.txt                         background, 0, 1, ..., 9 (label 0 = background, 1 + d = digit d)
    DIR/digitscenes.json                    parameters, seed, digit pools, statistics

Label 255 marks ambiguous pixels: where an anti-aliased edge of a digit (or of an occluder over a digit)
mixes two different classes, i.e. its coverage is strictly between 0.25 and 0.75. It is a band at most one
pixel wide and is ignored in training and metrics.

Distributions (``s = size / 128``; every length below is in pixels at size 128 and is multiplied by s):

- Difficulty ``d ~ U(0, 1)`` per image; the clutter ramp ``r = clip((d - 0.2) / 0.8, 0, 1)`` is 0 for
  d <= 0.2, so the easiest fifth of the images has a plain background, no clutter, no occluders, no noise.
- Contrast: digit and background luminance differ by ``dY = lerp(0.75, 0.12, d)`` (x U(0.85, 1.15) per
  digit). Background luminance ~ uniform over the values that leave room for dY; hue from a random RGB
  vector with saturation U(0, 0.8), luminance kept.
- Background: base colour + linear gradient (amplitude r * U(0, 0.3), random direction and tint)
  + smooth noise texture (4..16 cells, amplitude r * U(0, 0.25)) + with probability r / 2 sinusoidal
  stripes (period 6..30, amplitude r * U(0, 0.15)). Clutter, drawn under the digits and labelled
  background: Poisson(8 r) items, each a line (width 1..4), a filled ellipse (radius 3..20) or an arc
  (radius 8..30, width 2..6, span 60..270 degrees), half of them in the digits' luminance.
- Digits: count ``min(4, 1 + floor(3 d + U(0, 1)))`` (1 or 2 when d < 1/3). Height U(lerp(64, 32, d),
  96), width = height x U(0.75, 1.0); rotation U(-1, 1) x lerp(5, 25, d) degrees. Strokes: the 8x8
  digit (values / 16) upsampled bicubically to twice the target size, thresholded at U(0.4, 0.55),
  thickened by a disc of radius height x U(0.01, 0.04), rendered at 4x supersampling, whose 4x4 area
  average is the anti-aliased coverage. Position: uniform with the box inside the image (up to 0.15 r
  of the height outside), the least overlapping of 1 + round(3 (1 - d)) candidates, so easy images
  rarely overlap and hard ones often do (later digits on top). Sample: uniform from the split's pool.
- Occluders, drawn over the digits and labelled background: Poisson(2.5 r), at most 5; a bar (length
  15..50, width 3..10), a filled ellipse (radius 4..14) or a rotated rectangle (side 6..24); centred on a
  digit with probability 0.7, random colour.
- Noise: Gaussian with sigma r x U(0.5, 1) x 0.06 (of the 0..1 range); with probability r / 2 a Gaussian
  blur of sigma U(0.3, 0.8).

The summary's foreground fraction of an image is (digit pixels) / (pixels not labelled 255).

Digit pools: the 1,797 samples are permuted once with a fixed seed (independent of ``--seed``) and split
60% / 20% / 20% into the train / cal / test pools, so no handwritten sample appears in two splits.
Each image has its own generator seeded by (seed, split, index): same seed -> identical bytes.
"""

import json
import os
import shutil
import time

import numpy as np

from mess_edge.artifacts import make_temp_dir, write_json_atomic
from mess_edge.data.scene_render import IGNORE_INDEX, render_scene
from mess_edge.errors import MessError

FORMAT = "mess-edge-digitscenes/1"
SPLITS = ("train", "cal", "test")
CLASSES = ["background"] + [str(d) for d in range(10)]
_POOL_SEED = 20220101  # fixed: the train/cal/test digit pools never depend on --seed


def voc_palette():
    """The PASCAL VOC colour map: 256 RGB triplets as a flat list of 768 ints (index 255 -> 224,224,192)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal.extend((r, g, b))
    return pal


def digit_pools(n_samples=1797):
    """Disjoint digit-sample index pools {"train", "cal", "test"} (sorted int lists; 60/20/20 split)."""
    perm = np.random.default_rng(_POOL_SEED).permutation(n_samples)
    a, b = int(round(0.6 * n_samples)), int(round(0.8 * n_samples))
    return {"train": sorted(perm[:a].tolist()), "cal": sorted(perm[a:b].tolist()),
            "test": sorted(perm[b:].tolist())}


def image_rng(seed, split, index):
    """The generator of image ``index`` of ``split``: every draw of that image comes from it."""
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def image_difficulty(seed, split, index):
    """The difficulty d in [0, 1) the generator drew for image ``index`` of ``split`` (its first draw, see
    scene_render.render_scene): for breaking a result down by how hard the scenes were."""
    return float(image_rng(seed, split, index).uniform())


def foreground_fraction(label):
    """Fraction of non-ignored pixels that belong to a digit (labels 1..10)."""
    valid = label != IGNORE_INDEX
    return float(((label > 0) & valid).sum()) / max(1, int(valid.sum()))


def _params(size, n_train, n_cal, n_test, seed):
    params = {"size": size, "n_train": n_train, "n_cal": n_cal, "n_test": n_test, "seed": seed}
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise MessError("got {}={!r}; expected an integer".format(name, value))
        params[name] = int(value)
    if not 32 <= params["size"] <= 1024:
        raise MessError("got --size {}; expected 32..1024 pixels; try --size 128".format(size))
    for name in ("n_train", "n_cal", "n_test"):
        if params[name] < 1:
            raise MessError("got --{} {}; expected at least 1 image per split".format(
                name.replace("_", "-"), params[name]))
    if params["seed"] < 0:
        raise MessError("got --seed {}; expected a non-negative integer".format(seed))
    return params


def _existing(out_dir, params):
    """Summary of an up-to-date previous output in out_dir, or a MessError if out_dir holds anything else."""
    meta_path = os.path.join(out_dir, "digitscenes.json")
    meta = None
    if os.path.isfile(meta_path):
        try:
            with open(meta_path, "r", encoding="utf-8") as f:
                meta = json.load(f)
        except ValueError:
            meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MessError("output folder {} exists and is not empty; expected a new or empty folder (or a "
                        "previous DigitScenes output); try another --out".format(out_dir))
    old = meta.get("params", {})
    if old != params:
        diff = ", ".join("{}={} (folder has {})".format(k, params[k], old.get(k))
                         for k in params if old.get(k) != params[k])
        raise MessError("output folder {} holds DigitScenes made with other parameters: got {}; try another "
                        "--out, or delete the folder to regenerate".format(out_dir, diff))
    summary = dict(meta["summary"], out_dir=out_dir, seconds=0.0, up_to_date=True)
    return summary


def generate_digitscenes(out_dir, size=128, n_train=2000, n_cal=500, n_test=500, seed=0, show_progress=False):
    """Generate DigitScenes into ``out_dir`` (VOC layout, see the module docstring) and return a summary.

    The folder appears complete or not at all: images are written into a temporary folder beside
    ``out_dir`` that is renamed at the end. An existing non-empty ``out_dir`` is refused with a MessError,
    unless it is a DigitScenes output with identical parameters (then nothing is written).

    Returns a dict: out_dir, params, counts {split: n}, fg_mean / fg_p5 / fg_p95 (foreground fraction of
    non-ignored pixels, 0..1), seconds, up_to_date (bool), and, when images were generated,
    digits_used {split: sorted indices of the load_digits samples drawn}. ``show_progress``: a bar (or log
    lines) on stderr.
    """
    t0 = time.perf_counter()
    params = _params(size, n_train, n_cal, n_test, seed)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise MessError("got --out {}, which is a file; expected a folder".format(out_dir))
        if os.listdir(out_dir):
            return _existing(out_dir, params)
    from PIL import Image
    from sklearn.datasets import load_digits

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    bunch = load_digits()
    digits, targets = bunch.images / 16.0, bunch.target
    pools = digit_pools(len(digits))
    palette = voc_palette()

    from mess_edge.progress import progress

    tmp = make_temp_dir(parent, "." + os.path.basename(out_dir) + ".", ".tmp")
    bar = progress(sum(params["n_" + s] for s in SPLITS), "digitscenes", show_progress, unit="images")
    try:
        for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
            os.makedirs(os.path.join(tmp, sub))
        fg, used = [], {}
        for split_no, split in enumerate(SPLITS):
            ids, used_here = [], set()
            for i in range(params["n_" + split]):
                img, lab, idx = render_scene(image_rng(params["seed"], split, i), params["size"], digits, targets,
                                             pools[split])
                image_id = "{}_{:05d}".format(split, i)
                Image.fromarray(img).save(os.path.join(tmp, "JPEGImages", image_id + ".jpg"), quality=95)
                png = Image.frombytes("P", (lab.shape[1], lab.shape[0]), lab.tobytes())
                png.putpalette(palette)
                png.save(os.path.join(tmp, "SegmentationClass", image_id + ".png"))
                ids.append(image_id)
                used_here.update(idx)
                fg.append(foreground_fraction(lab))
                bar.update(1)
            used[split] = sorted(used_here)
            with open(os.path.join(tmp, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
                f.write("\n".join(ids) + "\n")
        bar.close()
        with open(os.path.join(tmp, "classes.txt"), "w") as f:
            f.write("\n".join(CLASSES) + "\n")
        fg = np.asarray(fg)
        stats = {"counts": {k: params["n_" + k] for k in SPLITS}, "params": params,
                 "fg_mean": round(float(fg.mean()), 4), "fg_p5": round(float(np.percentile(fg, 5)), 4),
                 "fg_p95": round(float(np.percentile(fg, 95)), 4)}
        meta = {"format": FORMAT, "params": params, "classes": CLASSES, "ignore_index": IGNORE_INDEX,
                "digit_pool_seed": _POOL_SEED, "summary": stats, "digit_pools": pools}
        write_json_atomic(os.path.join(tmp, "digitscenes.json"), meta)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above); rename cannot replace a folder on every OS
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dict(stats, out_dir=out_dir, seconds=time.perf_counter() - t0, up_to_date=False,
                digits_used=used)


def format_summary(summary):
    """One paragraph for the terminal from generate_digitscenes' summary."""
    c = summary["counts"]
    size = summary["params"]["size"]
    if summary.get("up_to_date"):
        head = "DigitScenes in {} is up to date (same parameters); nothing written.".format(summary["out_dir"])
    else:
        head = "DigitScenes written to {} in {:.1f} s.".format(summary["out_dir"], summary["seconds"])
    return ("{} {} train / {} cal / {} test images of {}x{} px, 11 classes (background, digits 0-9; 255 = "
            "ignore); mean foreground fraction {:.3f} (5th-95th percentile {:.3f}-{:.3f}).").format(
        head, c["train"], c["cal"], c["test"], size, size, summary["fg_mean"], summary["fg_p5"],
        summary["fg_p95"])


def write_split_video(data_dir, split, out_path, fps=10, repeat=1):
    """Write the images of one split of a VOC-layout folder as an mp4 video ('mp4v'); return frames written.

    Frames are shown in split order, the whole split ``repeat`` times; images of another size than the
    first are resized to it (bilinear). The file appears only when complete.
    """
    import cv2

    from mess_edge.artifacts import atomic_path
    from mess_edge.data.voc import VocDataset

    if fps <= 0 or repeat < 1:
        raise MessError("got fps={}, repeat={}; expected fps > 0 and repeat >= 1".format(fps, repeat))
    ds = VocDataset(data_dir, split)
    frames = 0
    with atomic_path(out_path) as tmp:
        writer = None
        try:
            for _ in range(int(repeat)):
                for i in range(len(ds)):
                    frame = cv2.imread(ds.image_path(i), cv2.IMREAD_COLOR)
                    if frame is None:
                        raise MessError("cannot read image {}; expected a JPEG or PNG".format(ds.image_path(i)))
                    if writer is None:
                        hw = frame.shape[:2]
                        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps),
                                                 (hw[1], hw[0]))
                        if not writer.isOpened():
                            raise MessError("cannot open a video writer for {} (OpenCV built without mp4v?); "
                                            "try a .avi path".format(out_path))
                    if frame.shape[:2] != hw:
                        frame = cv2.resize(frame, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
                    writer.write(frame)
                    frames += 1
        finally:
            if writer is not None:
                writer.release()
    return frames
