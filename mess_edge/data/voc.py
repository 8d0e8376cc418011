"""Reading segmentation data in the PASCAL VOC layout, and the augmentations used to train on it.

Layout (DigitScenes writes it; the real ``VOCdevkit/VOC2012`` folder has it too):

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png        palette ("P") or greyscale PNG: pixel value = class id, 255 = ignore
    ROOT/ImageSets/Segmentation/<split>.txt
    ROOT/classes.txt                        optional, one class name a line; without it, the 21 VOC classes

Labels are read with Pillow as palette *indices*: the colour a viewer shows is irrelevant. ``ROOT`` may also
be a ``VOCdevkit`` folder, in which case its ``VOC2012`` subfolder is used. No torch here.
"""

import os

import numpy as np

from mess_edge.errors import MessError

IGNORE_INDEX = 255
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _split_names(root):
    folder = os.path.join(root, "ImageSets", "Segmentation")
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".txt"))


class VocDataset:
    """One split of a VOC-layout folder.

    ``ids`` (list of str), ``classes`` (list of str), ``num_classes`` (int). ``load(i)`` returns
    ``(image uint8 [H, W, 3] RGB, label uint8 [H, W])`` with label values < num_classes or 255.
    ``num_classes`` defaults to the number of class names; a different value is refused when the folder
    has a classes.txt, and otherwise names the classes "0".."C-1" (a VOC folder keeps its 21 names).
    """

    def __init__(self, root, split, num_classes=None):
        root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(os.path.join(root, "JPEGImages")) and os.path.isdir(os.path.join(root, "VOC2012")):
            root = os.path.join(root, "VOC2012")
        if not os.path.isdir(root):
            raise MessError("dataset folder not found: {}; expected a VOC-layout folder (JPEGImages/, "
                            "SegmentationClass/, ImageSets/Segmentation/); try `mess-edge data digitscenes "
                            "--out {}`".format(root, root))
        self.root, self.split = root, split
        split_file = self.split_file = os.path.join(root, "ImageSets", "Segmentation", split + ".txt")
        if not os.path.isfile(split_file):
            have = _split_names(root)
            raise MessError("split '{}' not found: {} is missing; this dataset has splits: {}".format(
                split, split_file, ", ".join(have) if have else "none (no ImageSets/Segmentation/*.txt)"))
        with open(split_file, "r", encoding="utf-8") as f:
            self.ids = [line.split()[0] for line in f if line.strip()]
        if not self.ids:
            raise MessError("split file {} lists no images; expected one image id a line".format(split_file))

        classes_file = os.path.join(root, "classes.txt")
        if os.path.isfile(classes_file):
            with open(classes_file, "r", encoding="utf-8") as f:
                self.classes = [line.strip() for line in f if line.strip()]
            if num_classes is not None and num_classes != len(self.classes):
                raise MessError("got num_classes={}; {} lists {} classes; try num_classes={}".format(
                    num_classes, classes_file, len(self.classes), len(self.classes)))
        elif num_classes is None or num_classes == len(VOC_CLASSES):
            self.classes = list(VOC_CLASSES)
        else:
            self.classes = [str(c) for c in range(num_classes)]
        self.num_classes = len(self.classes)
        if not 1 <= self.num_classes <= 255:
            raise MessError("got {} classes; expected 1..255 (label 255 means ignore)".format(self.num_classes))

        self._images = [self._find_image(i) for i in self.ids]
        self._labels = [os.path.join(root, "SegmentationClass", i + ".png") for i in self.ids]
        missing = [p for p in self._labels if not os.path.isfile(p)]
        if missing:
            raise MessError("{} of {} images in split '{}' have no label file, e.g. {}; expected "
                            "SegmentationClass/<id>.png for every id in {}".format(
                                len(missing), len(self.ids), split, missing[0], split_file))

    def _find_image(self, image_id):
        base = os.path.join(self.root, "JPEGImages", image_id)
        for ext in _IMAGE_EXTS:
            if os.path.isfile(base + ext):
                return base + ext
        raise MessError("image file missing for id '{}' of split '{}': {}.jpg not found".format(
            image_id, self.split, base))

    def __len__(self):
        return len(self.ids)

    def image_path(self, i):
        return self._images[i]

    def label_path(self, i):
        return self._labels[i]

    def load(self, i):
        """Image uint8 [H, W, 3] RGB and label uint8 [H, W] of item i, validated (MessError naming the file)."""
        from PIL import Image

        try:
            with Image.open(self._images[i]) as im:
                image = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            raise MessError("cannot read image {} ({}); expected a valid JPEG or PNG; try regenerating "
                            "the dataset".format(self._images[i], e))
        try:
            with Image.open(self._labels[i]) as im:
                if im.mode not in ("P", "L"):
                    raise MessError("label {} has mode {}; expected a palette ('P') or greyscale ('L') PNG "
                                    "whose pixel values are class ids".format(self._labels[i], im.mode))
                label = np.asarray(im)  # palette indices, not colours
        except (OSError, SyntaxError, ValueError) as e:
            raise MessError("cannot read label {} ({}); expected a valid PNG".format(self._labels[i], e))
        if image.shape[:2] != label.shape:
            raise MessError("image/label size mismatch for id '{}': image {} is {}x{}, label {} is {}x{} "
                            "(H x W); expected equal sizes".format(
                                self.ids[i], self._images[i], image.shape[0], image.shape[1],
                                self._labels[i], label.shape[0], label.shape[1]))
        counts = np.bincount(label.ravel(), minlength=256)
        bad = [v for v in np.flatnonzero(counts).tolist() if v >= self.num_classes and v != IGNORE_INDEX]
        if bad:
            raise MessError("label {} has values {} out of range; expected 0..{} or {} (ignore)".format(
                self._labels[i], bad, self.num_classes - 1, IGNORE_INDEX))
        return image, label

    def check(self):
        """Load and validate every item; return {"n_images", "pixels_per_class" [C], "ignore_fraction"}."""
        first = {}
        for n, image_id in enumerate(self.ids):
            if image_id in first:  # counted twice by training and by every mIoU: a copy-paste slip, not data
                raise MessError("split file {} lists {!r} twice (ids {} and {}); expected each image once; try "
                                "removing the duplicate line".format(self.split_file, image_id, first[image_id] + 1,
                                                                     n + 1))
            first[image_id] = n
        per_class = np.zeros(self.num_classes, np.int64)
        ignored = total = 0
        for i in range(len(self)):
            _, label = self.load(i)
            counts = np.bincount(label.ravel(), minlength=256)
            per_class += counts[:self.num_classes]
            ignored += int(counts[IGNORE_INDEX])
            total += label.size
        return {"n_images": len(self), "pixels_per_class": per_class.tolist(),
                "ignore_fraction": ignored / float(max(total, 1))}


def check_folder(root, splits=()):
    """Validate every item of the given splits (default: all) of a VOC-layout folder; return report lines."""
    if not splits:
        probe = os.path.abspath(os.fspath(root))
        if not os.path.isdir(os.path.join(probe, "JPEGImages")) and os.path.isdir(os.path.join(probe, "VOC2012")):
            probe = os.path.join(probe, "VOC2012")
        splits = _split_names(probe)
        if not splits:
            VocDataset(root, "train")  # raises the folder / split error with its explanation
    lines = []
    for split in splits:
        ds = VocDataset(root, split)
        stats = ds.check()
        total = float(max(sum(stats["pixels_per_class"]), 1))
        shares = ", ".join("{} {:.1f}%".format(name, 100.0 * n / total)
                           for name, n in zip(ds.classes, stats["pixels_per_class"]))
        lines.append("{}: {} images OK in {}; {:.2f}% pixels ignored; classes: {}".format(
            split, stats["n_images"], ds.root, 100.0 * stats["ignore_fraction"], shares))
    return lines


def resize_pair(image, label, hw):
    """Resize image [H,W,3] (bilinear) and label [H,W] (nearest) to hw = (height, width)."""
    import cv2

    size = (int(hw[1]), int(hw[0]))
    return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))


def random_scale_crop_flip(image, label, rng, crop_hw, scale_range=(0.5, 2.0), flip=True):
    """Training augmentation: random rescale, random crop of crop_hw, random horizontal flip.

    image uint8 [H,W,3] (bilinear), label uint8 [H,W] (nearest); rng: np.random.Generator. Where the
    scaled image is smaller than the crop, the image is padded with the ImageNet mean colour (0 after
    ``normalize``) and the label with 255 (ignored). Returns (image [ch,cw,3], label [ch,cw]), uint8.
    """
    h, w = label.shape
    ch, cw = int(crop_hw[0]), int(crop_hw[1])
    s = rng.uniform(scale_range[0], scale_range[1])
    image, label = resize_pair(image, label, (max(1, int(round(h * s))), max(1, int(round(w * s)))))
    h, w = label.shape
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        fill = np.round(np.array(IMAGENET_MEAN) * 255).astype(np.uint8)
        big = np.empty((h + ph, w + pw, 3), np.uint8)
        big[:] = fill
        big[:h, :w] = image
        lab = np.full((h + ph, w + pw), IGNORE_INDEX, np.uint8)
        lab[:h, :w] = label
        image, label = big, lab
        h, w = label.shape
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    image, label = image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]
    if flip and rng.uniform() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def normalize(image, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 [H,W,3] RGB -> float32 [3,H,W]: (x / 255 - mean) / std."""
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
