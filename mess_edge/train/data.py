"""Training data: a VOC-layout folder as a torch Dataset with deterministic, step-indexed randomness.

Every random choice is a function of (seed, epoch, sample index), so a run resumed at step s sees exactly
the batches an uninterrupted run would, with or without DataLoader workers.
"""

import os

import numpy as np
import torch

from mess_edge.data.voc import VocDataset, normalize, random_scale_crop_flip, resize_pair

_PRELOAD_LIMIT_BYTES = 1 << 30  # keep a dataset in memory when smaller than this (DigitScenes is ~100 MB)


def augmentation_defaults(root):
    """DigitScenes: mild scale jitter and no flips (a mirrored digit is another glyph); VOC: the usual."""
    if os.path.isfile(os.path.join(root, "digitscenes.json")):
        return {"scale_range": (0.75, 1.25), "flip": False}
    return {"scale_range": (0.5, 2.0), "flip": True}


class SegmentationSet(torch.utils.data.Dataset):
    """(image float32 [3, H, W] normalised, label int64 [H, W]) pairs at ``input_hw``."""

    def __init__(self, root, split, input_hw, train, seed=0, num_classes=None):
        self.voc = VocDataset(root, split, num_classes)
        self.input_hw = tuple(input_hw)
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.aug = augmentation_defaults(root)
        self._cache = None
        if len(self.voc) * self.input_hw[0] * self.input_hw[1] * 4 < _PRELOAD_LIMIT_BYTES:
            self._cache = {}

    def __len__(self):
        return len(self.voc)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _load(self, i):
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        item = self.voc.load(i)
        if self._cache is not None:
            self._cache[i] = item
        return item

    def __getitem__(self, i):
        image, label = self._load(i)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            image, label = random_scale_crop_flip(image, label, rng, self.input_hw, **self.aug)
        elif image.shape[:2] != self.input_hw:
            image, label = resize_pair(image, label, self.input_hw)
        return torch.from_numpy(normalize(image)), torch.from_numpy(label.astype(np.int64))


def epoch_order(n, seed, epoch, rank=0, world=1, batch_size=1):
    """The sample order of one epoch for one rank: a seeded permutation, cut to whole global batches and
    dealt round-robin to ranks (the distributed sampler)."""
    perm = np.random.default_rng([seed, epoch, 7919]).permutation(n)
    global_batch = batch_size * world
    perm = perm[: len(perm) // global_batch * global_batch]
    return perm[rank::world].tolist()


def class_names(root, num_classes):
    path = os.path.join(root, "classes.txt")
    if os.path.isfile(path):
        with open(path) as f:
            return [ln.strip() for ln in f if ln.strip()]
    return [str(i) for i in range(num_classes)]
