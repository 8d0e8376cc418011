"""Prediction memoisation (sec. 5.1) over the calibration split.

Every trained head and the final exit run once over the split (one backbone pass per batch feeds them
all). Per image and head the memo keeps the confusion matrix against the ground truth and the confidence
statistics the exit policy needs for any pixel threshold (histograms of the raw and edge-enhanced top-1
confidence at the head's native resolution, computed exactly as the exported head graph computes them, and
the mean confidence for the averaging baseline). From then on the accuracy of any configuration is a sum of
stored confusion matrices, never a forward pass.

For the per-pixel Deep Layer Cascade baseline (Table 3, mess_edge.search.lc) the memo also keeps, per early
head and image, the cover histogram (lc_cover_hist) and the mixed prediction's per-class TP/FP/FN at a coarse
threshold grid (lc_stats, lc_th), plus meta["lc_radius"], the receptive-field radius downstream of each exit point.
"""

import os

import numpy as np


def receptive_radius(fn, x, root, cap=None):
    """Receptive-field radius, in pixels of ``x``'s grid, of everything ``fn`` computes from ``x`` (analytic).

    fn: callable on x [1, C, h, w]; root: the nn.Module whose Conv2d / pooling layers fn calls. Over those layers
    in call order: radius += dilation * (kernel - 1) // 2 * scale, scale = x's height / the layer input's height
    (its stride in x's pixels, measured, so a strided shortcut next to a strided conv is not counted twice).
    A layer fed a 1 x 1 map (global pooling, ASPP's image branch) or an adaptive pooling makes it global.
    Parallel branches are summed (an upper bound). Returns int, capped at ``cap`` (default max(h, w)).
    """
    import math

    import torch
    from torch import nn

    h, w = int(x.shape[-2]), int(x.shape[-1])
    cap = max(h, w) if cap is None else int(cap)
    seen = []
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append((mod, tuple(inp[0].shape[-2:]))))
             for m in root.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            fn(x)
    finally:
        for hk in hooks:
            hk.remove()
    radius = 0.0
    for mod, (ih, iw) in seen:
        if isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) or ((ih, iw) == (1, 1) and h * w > 1):
            return cap
        pair = (lambda v: (v, v) if isinstance(v, int) else tuple(v))
        kernel = pair(mod.kernel_size)
        dilation = pair(getattr(mod, "dilation", 1))
        reach = max(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
        radius += reach * max(h / ih, w / iw)
    return int(min(math.ceil(radius - 1e-9), cap))


def exit_point_radii(net, x):
    """[R_k] per exit point: receptive radius of the later backbone blocks + final head on exit point k's grid."""
    feats = net.forward_features(x[:1])

    def downstream(k):
        def fn(f):
            for s in range(k + 1, net.n_segments):
                f = net.forward_segment(s, f)
            return net.forward_final_head(f)
        return fn

    return [receptive_radius(downstream(k), feats[k], net) for k in range(len(net.exit_points))]


def memoise(ckpt_path, data, split="cal", max_images=None, batch_size=16, progress=True, desc=None):
    """Run the checkpoint's heads over a split and return a ``mess_edge.search.Memo``; ``progress``: a bar
    (or log lines) on stderr named ``desc`` [calibrate SPLIT]."""
    import torch
    from torch.nn import functional as F

    from mess_edge.artifacts import sha256_file
    from mess_edge.confidence import HIST_BINS, _pixel_confidence_f32, confidence_histograms, hist_bin_edges
    from mess_edge.metrics import confusion_matrix
    from mess_edge.progress import progress as progress_bar
    from mess_edge.search.lc import LC_TH, cover_histogram, lc_stats
    from mess_edge.search.memo import MEMO_FORMAT, Memo
    from mess_edge.train.checkpoint import build_model, load_checkpoint
    from mess_edge.train.data import SegmentationSet, class_names

    ckpt = load_checkpoint(ckpt_path)
    net = build_model(ckpt).eval().to(memory_format=torch.channels_last)  # 3x faster convs on the CPU
    heads = net.heads()
    ds = SegmentationSet(data, split, net.input_hw, train=False, num_classes=net.num_classes)
    n = len(ds) if not max_images else min(max_images, len(ds))
    H, C = len(heads), net.num_classes
    confusion = np.zeros((H + 1, n, C, C), np.int64)
    hist_edge = np.zeros((H + 1, n, HIST_BINS), np.int32)
    hist_raw = np.zeros((H + 1, n, HIST_BINS), np.int32)
    mean_conf = np.zeros((H + 1, n), np.float32)
    n_pixels = np.zeros((H + 1, n), np.int64)
    keys = list(heads) + ["final"]
    lc_th = np.array(LC_TH, np.float64)
    lc_cover = np.zeros((H, n, HIST_BINS), np.int32)
    lc_stat = np.zeros((H, n, len(lc_th), 3 * C), np.int32)
    radii = None
    with torch.no_grad(), progress_bar(n, desc or "calibrate {}".format(split), progress,
                                         unit="images") as bar:
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            items = [ds[i] for i in idx]
            x = torch.stack([a for a, _ in items]).contiguous(memory_format=torch.channels_last)
            y = torch.stack([b for _, b in items]).numpy()
            outs = net.forward_heads(x, heads)
            if radii is None:
                radii = exit_point_radii(net, x)
            preds = {}
            for h, key in enumerate(keys):
                logits = outs[key]
                pred = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
                pred = pred.numpy()
                preds[h] = pred
                native = logits.numpy().astype(np.float32)
                he, hr, mc = confidence_histograms(native)
                hist_edge[h, idx], hist_raw[h, idx], mean_conf[h, idx] = he, hr, mc
                n_pixels[h, idx] = native.shape[-2] * native.shape[-1]
                for j, i in enumerate(idx):
                    confusion[h, i] = confusion_matrix(pred[j], y[j], C)
            for h, (k, _) in enumerate(heads):  # LC baseline: per-pixel exits at head h, else the final's label
                conf = _pixel_confidence_f32(outs[keys[h]].numpy(), "top1")
                lc_cover[h, idx] = cover_histogram(conf, radii[k], hist_bin_edges())
                lc_stat[h, idx] = lc_stats(conf, preds[h], preds[H], y, lc_th, C)
            bar.update(len(idx))
    meta = {"format": MEMO_FORMAT, "checkpoint": os.path.abspath(ckpt_path),
            "checkpoint_sha256": sha256_file(ckpt_path), "num_classes": C,
            "classes": class_names(data, C), "input_hw": list(net.input_hw),
            "exit_points": [e.to_dict() for e in net.exit_points], "split": split, "n_images": n,
            "data": os.path.abspath(data), "stride_per_exit": [e.stride for e in net.exit_points],
            "image_ids": ds.voc.ids[:n], "lc_radius": radii or []}
    return Memo(confusion=confusion, hist_edge=hist_edge, hist_raw=hist_raw, hist_bins=hist_bin_edges(),
                mean_conf=mean_conf, n_pixels=n_pixels, head_exit=np.array([k for k, _ in heads], np.int64),
                head_arch=np.array([[a.crm, a.blocks, a.rdi, a.head] for _, a in heads], np.int64).reshape(H, 4),
                meta=meta, lc_cover_hist=lc_cover, lc_stats=lc_stat, lc_th=lc_th)
