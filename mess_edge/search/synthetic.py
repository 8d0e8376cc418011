"""Random memos and cost tables with the structure of real ones, for the tests and benchmarks/search_speed.py.

Deeper and larger heads are more accurate, hard images are hard for every exit, and a head's pixel confidence
is high where it is right and lower where it is wrong, so the image confidence predicts the image's accuracy
as in a trained MESS network. Nothing here is used by a real search.
"""

import numpy as np

from mess_edge.search.costs import make_cost_table
from mess_edge.search.memo import MEMO_FORMAT, Memo


def random_memo(n_points=4, heads_per_point=16, n_images=500, n_classes=11, n_bins=100, gt_pixels=4096,
                native_pixels=256, seed=0, checkpoint_sha256="0" * 64):
    """A Memo of n_points x heads_per_point heads + the final exit on n_images images (see the module doc)."""
    rng = np.random.default_rng(seed)
    h = n_points * heads_per_point
    head_exit = np.repeat(np.arange(n_points), heads_per_point).astype(np.int64)
    arch = np.stack(np.unravel_index(np.arange(heads_per_point) % 64, (4, 4, 2, 2)), axis=1)
    head_arch = np.tile(arch, (n_points, 1)).astype(np.int64)  # (crm, blocks, rdi, head), distinct per point
    depth = np.r_[(head_exit + 1) / (n_points + 1), 1.0]
    capacity = np.r_[(head_arch[:, 1] + 1) / 4.0 - head_arch[:, 0] / 8.0, 1.0]
    quality = 0.55 + 0.3 * np.sqrt(depth) + 0.06 * capacity + rng.normal(0, 0.01, h + 1)  # [H+1], final ~0.9
    difficulty = rng.beta(2.0, 3.0, n_images)  # [I]
    # Easy images are right at every exit; hard ones separate the shallow exits from the deep ones.
    err = (1 - quality[:, None]) * 3.0 * difficulty[None, :] ** 1.5 + rng.normal(0, 0.01, (h + 1, n_images))
    acc = np.clip(1 - err, 0.05, 0.995)

    # Ground truth: background plus one to three object classes per image, shared by every exit.
    present = np.zeros((n_images, n_classes))
    present[:, 0] = rng.uniform(1.0, 3.0, n_images)
    for i in range(n_images):
        objs = rng.choice(np.arange(1, n_classes), size=rng.integers(1, min(3, n_classes - 1) + 1), replace=False)
        present[i, objs] = rng.uniform(0.3, 1.5, len(objs))
    gt = np.array([rng.multinomial(gt_pixels, p / p.sum()) for p in present])  # [I, C]

    # Each exit labels a class's pixels right with probability acc[h, i], else as one of two other classes.
    n = np.broadcast_to(gt[None], (h + 1, n_images, n_classes))
    right = rng.binomial(n, acc[:, :, None])
    wrong = n - right
    first = rng.binomial(wrong, 0.6)
    # Mistakes go mostly to the background or to another class of the image, as a real network's do.
    objects = np.argmax(present[:, 1:], axis=1) + 1  # [I] the image's main object class
    other1 = np.where(np.arange(n_classes) == 0, objects[None, :, None], 0) * np.ones(n.shape, dtype=np.int64)
    other2 = (np.arange(n_classes) + rng.integers(1, n_classes, n.shape)) % n_classes
    confusion = np.zeros((h + 1, n_images, n_classes, n_classes), dtype=np.int64)
    hi, ii, ci = np.indices(n.shape)
    np.add.at(confusion, (hi, ii, ci, ci), right)
    np.add.at(confusion, (hi, ii, ci, other1), first)
    np.add.at(confusion, (hi, ii, ci, other2), wrong - first)

    # Pixel confidences at the native resolution: high where right, lower where wrong; edge enhancement lifts
    # a band of boundary pixels towards their neighbours' confidence.
    ok = rng.random((h + 1, n_images, native_pixels)) < acc[:, :, None]
    conf = np.where(ok, rng.beta(9.0, 1.3, ok.shape), rng.beta(2.0, 2.2, ok.shape))
    edge = rng.random(ok.shape) < 0.15
    conf_edge = np.where(edge, np.maximum(conf, 0.5 * (conf + rng.beta(8.0, 1.5, ok.shape))), conf)

    def hist(c):
        b = np.minimum((c * n_bins).astype(np.int64), n_bins - 1)
        flat = (np.arange((h + 1) * n_images).reshape(h + 1, n_images, 1) * n_bins + b).ravel()
        return np.bincount(flat, minlength=(h + 1) * n_images * n_bins).reshape(h + 1, n_images, n_bins)

    meta = {"format": MEMO_FORMAT, "checkpoint_sha256": checkpoint_sha256, "num_classes": n_classes,
            "classes": ["background"] + [str(k) for k in range(n_classes - 1)], "input_hw": [128, 128],
            "exit_points": list(range(n_points)), "split": "cal", "n_images": n_images,
            "stride_per_exit": [8] * n_points + [8]}
    return Memo(confusion=confusion, hist_edge=hist(conf_edge), hist_raw=hist(conf),
                hist_bins=np.linspace(0.0, 1.0, n_bins + 1), mean_conf=conf.mean(axis=2).astype(np.float32),
                n_pixels=np.full((h + 1, n_images), native_pixels, dtype=np.int64), head_exit=head_exit,
                head_arch=head_arch, meta=meta)


def random_costs(memo, n_points, model="latency", seed=0, stretches=False):
    """A CostTable for ``memo``: segments, heads growing with capacity, a final exit and small upsamples;
    ``stretches``: also every multi-graph backbone stretch, at 0.8-1.1x the sum of its pieces."""
    rng = np.random.default_rng(seed)
    segment = rng.uniform(0.5, 2.0, n_points)
    capacity = (memo.head_arch[:, 1] + 1) * 2.0 ** -memo.head_arch[:, 0] * (1 + memo.head_arch[:, 3])
    head = 0.05 + 0.1 * capacity * rng.uniform(0.8, 1.2, memo.n_heads)
    upsample = rng.uniform(0.01, 0.05, memo.n_heads + 1)
    final = rng.uniform(0.5, 2.0)
    pieces = list(segment) + [final]
    fused = [(a, b, float(np.sum(pieces[a:b + 1])) * rng.uniform(0.8, 1.1))
             for a in range(n_points + 1) for b in range(a + 1, n_points + 1)] if stretches else ()
    return make_cost_table(model, segment, head, final, upsample, stretches=fused)
