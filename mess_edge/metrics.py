"""Segmentation metrics from confusion matrices (numpy only; device side).

Convention: a confusion matrix ``conf`` is int64 [C, C] with rows = ground truth and columns = prediction,
ignore-index pixels dropped. These functions return FRACTIONS in [0, 1]; JSON artifacts and printed tables
report mIoU in percent (fields named "miou").

mIoU averages over the classes whose union (ground truth or prediction) is non-empty: a class that is
absent from both the ground truth and the prediction has no IoU (nan) and does not count.
"""

import numpy as np

from mess_edge.errors import MessError


def confusion_matrix(pred, gt, num_classes, ignore_index=255):
    """Confusion matrix int64 [C, C] (rows = ground truth, cols = prediction) of two label maps.

    pred, gt: integer arrays of the same shape (any number of dimensions). Pixels where gt == ignore_index
    are dropped. A prediction outside 0..C-1 (at a counted pixel), or a ground truth value outside 0..C-1
    that is not ignore_index, raises a MessError.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise MessError("got prediction of shape {} and ground truth of shape {}; expected equal shapes".format(
            pred.shape, gt.shape))
    if pred.dtype.kind not in "iu" or gt.dtype.kind not in "iu":
        raise MessError("got label maps of dtype {} / {}; expected integer class ids".format(pred.dtype, gt.dtype))
    c = int(num_classes)
    keep = gt != ignore_index
    p = pred[keep].astype(np.int64, copy=False)
    g = gt[keep].astype(np.int64, copy=False)
    if p.size:
        if p.min() < 0 or p.max() >= c:
            bad = np.unique(p[(p < 0) | (p >= c)])[:8].tolist()
            raise MessError("got predicted class ids {} out of range; expected 0..{}".format(bad, c - 1))
        if g.min() < 0 or g.max() >= c:
            bad = np.unique(g[(g < 0) | (g >= c)])[:8].tolist()
            raise MessError("got ground-truth class ids {} out of range; expected 0..{} or {} (ignore)".format(
                bad, c - 1, ignore_index))
    return np.bincount(g * c + p, minlength=c * c).reshape(c, c)


def iou_per_class(conf):
    """IoU per class, float64 [C]: tp / (gt + pred - tp); nan where that union is 0."""
    conf = np.asarray(conf)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    out = np.full(conf.shape[0], np.nan)
    present = union > 0
    out[present] = tp[present] / union[present]
    return out


def miou(conf):
    """Mean IoU over classes with a non-empty union, a fraction in [0, 1]; nan if there is none."""
    iou = iou_per_class(conf)
    iou = iou[~np.isnan(iou)]
    return float(iou.mean()) if iou.size else float("nan")


def pixel_accuracy(conf):
    """Fraction of counted pixels predicted correctly; nan for an empty matrix."""
    conf = np.asarray(conf)
    total = conf.sum()
    return float(np.trace(conf)) / float(total) if total else float("nan")


_BATCH_CHUNK = 4096  # matrices per step: keeps the [chunk, C] temporaries in cache (2x faster at 200k x 11 x 11)


def miou_batch(confs):
    """mIoU of many confusion matrices at once: confs [..., C, C] (integer or float) -> float64 [...].

    Same definition as ``miou`` (nan where no class has a non-empty union), vectorised for the search,
    which scores millions of exit configurations (about 0.4 us per 11 x 11 matrix on one core).
    """
    confs = np.asarray(confs)
    c = confs.shape[-1]
    flat = confs.reshape(-1, c, c)
    # Sums in 64 bits whatever comes in: uint8 / int32 sums could wrap.
    wide = np.int64 if confs.dtype.kind in "iub" else np.float64
    out = np.empty(flat.shape[0])
    for start in range(0, flat.shape[0], _BATCH_CHUNK):
        _miou_chunk(np.ascontiguousarray(flat[start:start + _BATCH_CHUNK], dtype=wide),
                    out[start:start + _BATCH_CHUNK])
    return out.reshape(confs.shape[:-2])


def _miou_chunk(confs, out):
    """miou_batch on contiguous [n, C, C] -> out [n]."""
    c = confs.shape[-1]
    tp = confs.reshape(-1, c * c)[:, ::c + 1].astype(np.float64)  # the diagonals, contiguous
    # einsum reduces the small last axes several times faster than ndarray.sum here.
    union = (np.einsum("nij->ni", confs) + np.einsum("nij->nj", confs)).astype(np.float64)
    union -= tp
    count = np.count_nonzero(union > 0, axis=-1)
    # tp == 0 wherever union == 0, so dividing by max(union, 1) gives 0 there; those classes are left
    # out of the mean by ``count``, which avoids nan arithmetic and its warnings.
    np.maximum(union, 1, out=union)
    np.divide(tp, union, out=tp)
    total = tp.sum(-1)
    out[:] = np.nan
    np.divide(total, count, out=out, where=count > 0)
