"""Deep Layer Cascade (LC, Li et al. CVPR 2017) as the per-pixel exit baseline of the paper's Table 3 (numpy only).

LC lets every pixel exit at an early head when its own top-1 confidence reaches a threshold t; the other
pixels continue to the final exit. Its workload is analysed in MACs (sec. 6.2), because per-pixel paths are
unstructured: a pixel that goes deeper needs the whole feature volume inside its receptive field computed.
The definition settled here (one early head h at exit point k, then the final exit; everything per image):

1. Pixel confidence ``c`` [h, w]: the RAW top-1 confidence of head h at its native resolution (no edge
   enhancement; ``mess_edge.confidence`` computes it as the head graph does, float32).
2. Receptive-field radius R_k (native feature pixels of exit point k) of everything downstream of k (later
   backbone blocks + final head), analytic (``mess_edge.calibrate.memoise.receptive_radius``): over the Conv2d / pooling
   layers in call order, radius += dilation * (kernel - 1) // 2 * scale, scale = the layer input's stride in
   exit-point pixels (measured from the input sizes, so a strided shortcut is not counted twice); a global
   pooling (a layer fed a 1 x 1 map, e.g. ASPP's image pooling) makes it global. Capped at max(h, w). Parallel
   branches (ASPP rates) are summed, not maxed: an upper bound there, exact for chains and residual blocks with
   1 x 1 shortcuts. Stored per exit point as meta["lc_radius"].
3. Cover: native position p must still be computed deeper when its (2R+1)^2 window (in-image pixels) holds a
   pixel with c < t, i.e. ``m(p) = window_min(c, R)(p) < t``. The memo stores the histogram of m on its bin
   edges (``lc_cover_hist`` int32 [H, I, B]); cover(t = hist_bins[j]) = lc_cover_hist[..., :j].sum(-1) / n_pixels.
   The whole downstream workload is scaled by the cover at exit point k: deeper layers need only the
   dilation of the uncertain set by their own (smaller) remaining radius, so this is an upper bound on LC's
   MACs (the same direction as the paper's argument; it is exact whenever the cover is 0 or 1).
4. Accuracy at thresholds ``lc_th`` (float64 [T], memo bin edges): the head's label (bilinear upsampled logits,
   argmax, as calibrate scores every head) where c >= t at native resolution (mask upsampled nearest to the
   label size), the final exit's label elsewhere; per image and class (TP, FP, FN) -> ``lc_stats`` [H, I, T, 3C].
5. MACs per image of (h, t): cost(segments 0..k) + cost(head h) + upsample(h)
   + mean_i cover_i(t) * (cost(segments k+1..N-1) + cost(final) + upsample(final)).

Thresholds are compared in float32 (t as float32, like the memo's histograms), so cover and accuracy agree on
which pixels exit. lc_th never includes 1.0: the memo's last bin also holds 1.0, so cover there would be 1.
"""

import numpy as np

from mess_edge.errors import MessError
from mess_edge.search.memo import miou_from_stats

LC_TH = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)  # default lc_th (bin edges of 100 uniform bins)


def window_min(conf, radius):
    """Min over the in-image (2r+1) x (2r+1) window of every pixel. conf: float [..., h, w] -> same shape, dtype.

    Separable (a square window's min is the min over columns of the min over rows); out-of-image slots are
    +inf so only in-image pixels count.
    """
    conf = np.asarray(conf)
    r = int(radius)
    if r < 0:
        raise MessError("got receptive-field radius {}; expected >= 0".format(r))
    h, w = conf.shape[-2:]
    if r >= max(h, w) - 1:  # the window covers the whole image from every position
        return np.broadcast_to(conf.min(axis=(-2, -1), keepdims=True), conf.shape).copy()
    out = conf
    for axis, n in ((-2, h), (-1, w)):
        pad = [(0, 0)] * conf.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="constant", constant_values=np.inf)
        acc = np.take(padded, np.arange(0, n), axis=axis)
        for d in range(1, 2 * r + 1):
            acc = np.minimum(acc, np.take(padded, np.arange(d, d + n), axis=axis))
        out = acc
    return out.astype(conf.dtype, copy=False)


def cover_histogram(conf, radius, edges):
    """LC cover histogram: int32 [N, B] of window_min(conf, radius) binned on ``edges`` (float64 [B+1]).

    conf: float32 [N, h, w] raw confidence. Binning as the memo's (float32 edges, value v in bin j when
    edges32[j] <= v < edges32[j+1], 1.0 and above in the last bin), so hist[..., :j].sum() == #{m < edges32[j]}.
    """
    conf = np.asarray(conf, dtype=np.float32)
    edges32 = np.asarray(edges, dtype=np.float64).astype(np.float32)
    bins = len(edges32) - 1
    m = window_min(conf, radius).reshape(len(conf), -1)
    idx = np.clip(np.searchsorted(edges32, m.ravel(), side="right") - 1, 0, bins - 1).reshape(m.shape)
    offset = np.arange(len(conf))[:, None] * bins
    return np.bincount((idx + offset).ravel(), minlength=len(conf) * bins).reshape(len(conf), bins).astype(np.int32)


def upsample_nearest(x, out_hw):
    """Nearest upsampling of [..., h, w] to out_hw as torch's F.interpolate(mode="nearest"): src = floor(dst*h/H)."""
    h, w = x.shape[-2:]
    rows = np.minimum((np.arange(out_hw[0]) * h) // out_hw[0], h - 1)
    cols = np.minimum((np.arange(out_hw[1]) * w) // out_hw[1], w - 1)
    return x[..., rows[:, None], cols[None, :]]


def lc_stats(conf, head_pred, final_pred, gt, thresholds, num_classes, ignore_index=255):
    """Per image and threshold, per class (TP, FP, FN) of LC's mixed prediction: int32 [N, T, 3C].

    conf: float32 [N, h, w] raw head confidence (native); head_pred, final_pred, gt: int [N, Hy, Wy] labels;
    thresholds: [T] (compared as float32). Pixels with gt == ignore_index are dropped.
    """
    conf = np.asarray(conf, dtype=np.float32)
    gt = np.asarray(gt).astype(np.int64)
    c = int(num_classes)
    n, hy, wy = gt.shape
    keep = gt != ignore_index
    th32 = np.asarray(thresholds, dtype=np.float64).astype(np.float32)
    out = np.zeros((n, len(th32), 3 * c), np.int64)
    offset = np.arange(n)[:, None, None] * (c * c)
    for t, th in enumerate(th32):
        mask = upsample_nearest(conf >= th, (hy, wy))
        mixed = np.where(mask, head_pred, final_pred).astype(np.int64)
        code = (offset + gt * c + mixed)[keep]
        conf_mat = np.bincount(code, minlength=n * c * c).reshape(n, c, c)
        tp = np.diagonal(conf_mat, axis1=1, axis2=2)
        out[:, t] = np.concatenate([tp, conf_mat.sum(axis=1) - tp, conf_mat.sum(axis=2) - tp], axis=1)
    return out.astype(np.int32)


def _require_lc(memo):
    if not memo.has_lc:
        raise MessError("got a memo without the LC arrays (lc_cover_hist, lc_stats, lc_th); expected a memo from "
                        "the current mess-edge calibrate; try re-running calibrate")


def _exit_of(memo, costs, head):
    if not 0 <= int(head) < memo.n_heads:
        raise MessError("got LC head {}; expected 0..{}".format(head, memo.n_heads - 1))
    k = int(memo.head_exit[head])
    if k >= len(costs.segment):
        raise MessError("got head {} at exit point {} and {} segment costs; expected the memo's cost table".format(
            head, k, len(costs.segment)))
    return k


def lc_miou(memo, head, t_index):
    """mIoU (fraction) of LC's mixed prediction for head ``head`` at threshold lc_th[t_index], over the memo."""
    s = memo.lc_stats[head, :, t_index].astype(np.float64).sum(axis=0)
    c = memo.n_classes
    tp, fp, fn = s[:c], s[c:2 * c], s[2 * c:]
    return float(miou_from_stats(np.concatenate([tp, tp + fn, tp + fp])))


def lc_point(memo, costs, head, t_index):
    """LC with early head ``head`` and pixel threshold memo.lc_th[t_index]: {"miou" (fraction), "macs" (costs'
    unit per image), "deeper_fraction" (mean cover), "head", "th", "t_index"}. costs: a CostTable aligned with the memo."""
    _require_lc(memo)
    k = _exit_of(memo, costs, head)
    t_index = int(t_index)
    if not 0 <= t_index < len(memo.lc_th):
        raise MessError("got LC threshold index {}; expected 0..{}".format(t_index, len(memo.lc_th) - 1))
    j = memo.bin_index(float(memo.lc_th[t_index]))
    cover = memo.lc_cover_hist[head, :, :j].sum(axis=-1) / memo.n_pixels[head].astype(np.float64)
    deeper = float(np.mean(cover))
    before = 0.0
    for v in costs.segment[:k + 1]:
        before += float(v)
    after = 0.0
    for v in costs.segment[k + 1:]:
        after += float(v)
    macs = before + float(costs.head[head]) + float(costs.upsample[head]) + deeper * (
        after + float(costs.final) + float(costs.upsample[-1]))
    return {"miou": lc_miou(memo, head, t_index), "macs": macs, "deeper_fraction": deeper, "head": int(head),
            "th": float(memo.lc_th[t_index]), "t_index": t_index}


def lc_search(memo, costs, max_drop_pp, policy="edge"):
    """The cheapest LC (head, t) within ``max_drop_pp`` percentage points of final-only's mIoU, and the MESS
    input-dependent instance (one early exit + final, MAC costs) under the same constraint.

    Returns {"max_drop_pp", "final_only_macs", "final_miou" (fraction), "lc": point + "speedup" or None,
    "mess": {"miou", "macs", "speedup", "description", "result"} or None}; speedup = final-only MACs / MACs.
    LC ties break on higher mIoU, then lower head index, then lower threshold.
    """
    from mess_edge.search.optimizer import Objective, search

    _require_lc(memo)
    if costs.model != "macs":
        raise MessError("got a {} cost table; expected MACs (Table 3 compares workload); try "
                        "costs_from_manifest".format(costs.model))
    final_only = float(costs.final_only())
    final_miou = float(memo.head_miou()[-1])
    threshold = final_miou - float(max_drop_pp) / 100.0
    best = None
    for h in range(memo.n_heads):
        for t in range(len(memo.lc_th)):
            p = lc_point(memo, costs, h, t)
            if not p["miou"] >= threshold:
                continue
            key = (p["macs"], -p["miou"], h, t)
            if best is None or key < best[0]:
                best = (key, p)
    lc = None
    if best is not None:
        lc = dict(best[1], speedup=final_only / best[1]["macs"] if best[1]["macs"] > 0 else float("inf"))
    mess = None
    try:
        res = search(memo, costs, "input-dependent", Objective(max_drop=float(max_drop_pp) / 100.0), max_exits=1,
                     policy=policy)
        mess = {"miou": res.miou, "macs": res.cost, "speedup": final_only / res.cost if res.cost > 0 else float("inf"),
                "description": res.description, "result": res}
    except MessError:  # no configuration meets the constraint
        mess = None
    return {"max_drop_pp": float(max_drop_pp), "final_only_macs": final_only, "final_miou": final_miou,
            "lc": lc, "mess": mess}
